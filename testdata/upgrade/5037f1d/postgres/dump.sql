--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: keys_count(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.keys_count() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE key_counts SET n = n - 1 WHERE partition_id = OLD.partition_id AND status = OLD.status;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO key_counts (partition_id, status, n) VALUES (NEW.partition_id, NEW.status, 1)
            ON CONFLICT (partition_id, status) DO UPDATE SET n = key_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: __diesel_schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.__diesel_schema_migrations (
    version character varying(50) NOT NULL,
    run_on timestamp without time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);


--
-- Name: audit_records; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_records (
    seq bigint NOT NULL,
    at bigint NOT NULL,
    username text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    outcome text NOT NULL,
    request_id text NOT NULL,
    client text NOT NULL,
    previous_hash text NOT NULL,
    hash text NOT NULL
);


--
-- Name: connection_members; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.connection_members (
    connection_id text NOT NULL,
    "position" integer NOT NULL,
    hostname text NOT NULL,
    partition_label text NOT NULL,
    serial_number text NOT NULL
);


--
-- Name: connections; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.connections (
    id text NOT NULL,
    name text NOT NULL,
    description text NOT NULL,
    is_ha_enabled boolean NOT NULL,
    remap_rsa_mechanisms boolean NOT NULL,
    pin_ciphertext bytea NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);


--
-- Name: idempotent_requests; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.idempotent_requests (
    caller text NOT NULL,
    idempotency_key text NOT NULL,
    route text NOT NULL,
    body_digest text NOT NULL,
    resource_id text NOT NULL,
    created_at bigint NOT NULL
);


--
-- Name: jobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.jobs (
    id text NOT NULL,
    job_type text NOT NULL,
    partitions text NOT NULL,
    overall_status text NOT NULL,
    abort_requested boolean NOT NULL,
    detailed_status text NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    completed_at bigint
);


--
-- Name: key_counts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.key_counts (
    partition_id text NOT NULL,
    status text NOT NULL,
    n bigint NOT NULL
);


--
-- Name: keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.keys (
    id text NOT NULL,
    partition_id text NOT NULL,
    partition_label text NOT NULL,
    label text NOT NULL,
    status text NOT NULL,
    operation text NOT NULL,
    operation_status text NOT NULL,
    operation_error text,
    algorithm text,
    object_type text,
    mechanism text,
    generated_with text,
    size integer NOT NULL,
    attributes text NOT NULL,
    cka_id bytea NOT NULL,
    object_uid text NOT NULL,
    sha_256_fingerprint text NOT NULL,
    replication_info text NOT NULL,
    replicated boolean NOT NULL,
    byok_key boolean NOT NULL,
    origin text NOT NULL,
    modulus text NOT NULL,
    exponent bigint NOT NULL,
    link_id text,
    ha_enabled boolean NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);


--
-- Name: operations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.operations (
    id text NOT NULL,
    kind text NOT NULL,
    target_id text NOT NULL,
    payload text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL,
    lease_owner text,
    lease_expires_at bigint,
    last_error text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);


--
-- Name: partitions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.partitions (
    id text NOT NULL,
    connection_id text NOT NULL,
    partition_label text NOT NULL,
    serial_number text NOT NULL,
    ha_enabled boolean NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);


--
-- Name: refresh_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.refresh_tokens (
    token_hash text NOT NULL,
    user_id text NOT NULL,
    expires_at bigint NOT NULL,
    created_at bigint NOT NULL
);


--
-- Name: running_jobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.running_jobs (
    job_type text NOT NULL,
    partition_id text NOT NULL,
    job_id text NOT NULL
);


--
-- Name: users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.users (
    id text NOT NULL,
    username text NOT NULL,
    password_hash text NOT NULL,
    user_groups text NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);


--
-- Data for Name: __diesel_schema_migrations; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.__diesel_schema_migrations VALUES ('20261128000001', '2026-12-07 15:54:24.386465');
INSERT INTO public.__diesel_schema_migrations VALUES ('20261128000002', '2026-12-07 15:54:24.445149');
INSERT INTO public.__diesel_schema_migrations VALUES ('20261128000003', '2026-12-07 15:54:24.462252');
INSERT INTO public.__diesel_schema_migrations VALUES ('20261128000004', '2026-12-07 15:54:24.470762');
INSERT INTO public.__diesel_schema_migrations VALUES ('20261129000005', '2026-12-07 15:54:24.477542');
INSERT INTO public.__diesel_schema_migrations VALUES ('20261129000006', '2026-12-07 15:54:24.479795');


--
-- Data for Name: audit_records; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.audit_records VALUES (1, 1796658865214237, 'admin', 'POST /api/v1/cckm/hsm/luna/keys', '/api/v1/cckm/hsm/luna/keys', '201', '0cf41d2d-38dc-4980-9192-69952da6f7b8', '127.0.0.1', '0000000000000000000000000000000000000000000000000000000000000000', 'c956a3bc627f48b0f20caef5db947eff7f156bf0a9e7a5e3262ed97a330e80a3');
INSERT INTO public.audit_records VALUES (2, 1796658865238325, 'luna-server', 'operation keycreate', 'fc05cc62-9f3e-47f0-8abf-89137ed76323', 'succeeded', '103f323a-6339-4b30-a483-b2c10596d566', '391-5f966af3f88e452ba15b24355c9d3f76', 'c956a3bc627f48b0f20caef5db947eff7f156bf0a9e7a5e3262ed97a330e80a3', '7d18af84ac98b139929ac198cc1b3812200040a1a1a09af003710fa5f2a5361a');
INSERT INTO public.audit_records VALUES (3, 1796658865379340, 'admin', 'POST /api/v1/cckm/hsm/luna/keys', '/api/v1/cckm/hsm/luna/keys', '201', '0ea8d6ab-d656-40b9-9195-e953d7b0e6db', '127.0.0.1', '7d18af84ac98b139929ac198cc1b3812200040a1a1a09af003710fa5f2a5361a', '393362660c84ad1c8838851e39a230667d5e623c235dc627f06bd01a7637b909');
INSERT INTO public.audit_records VALUES (4, 1796658865621276, 'admin', 'POST /api/v1/usermgmt/users', '/api/v1/usermgmt/users', '201', '5bf252e6-71b7-407d-8662-1b1fdb14511a', '127.0.0.1', '393362660c84ad1c8838851e39a230667d5e623c235dc627f06bd01a7637b909', '410f7cc7ab68ce7256943a0eeac1f7179b40952c0168db3c215d92b9fd734cd6');
INSERT INTO public.audit_records VALUES (5, 1796658866110933, 'luna-server', 'operation keycreate', '7ab32ca5-2283-4eb8-a829-fe7ce6c645fb', 'succeeded', '29a5850d-d7f3-4b9d-b0ef-a7a9d04f0200', '391-5f966af3f88e452ba15b24355c9d3f76', '410f7cc7ab68ce7256943a0eeac1f7179b40952c0168db3c215d92b9fd734cd6', 'ecd9a708ddfda32dbf1405bb46e2769de7c544ef48d90f5e1ce589c51fc63775');
INSERT INTO public.audit_records VALUES (6, 1796658867642806, 'admin', 'POST /api/v1/cckm/hsm/luna/refresh', '/api/v1/cckm/hsm/luna/refresh', '201', '7538d0cc-716e-4bde-a3fc-9bba8b7ebc8d', '127.0.0.1', 'ecd9a708ddfda32dbf1405bb46e2769de7c544ef48d90f5e1ce589c51fc63775', '3ab105c18bbd8ac9701221d00cc42c00dacec845bbd576bfe1cb50411bb45a68');
INSERT INTO public.audit_records VALUES (7, 1796658867661149, 'luna-server', 'operation job', '4857d6b3-efc4-4312-a11b-63f5821ba39b', 'succeeded', '8689c107-f1ae-4734-b623-75a8acc3c208', '391-5f966af3f88e452ba15b24355c9d3f76', '3ab105c18bbd8ac9701221d00cc42c00dacec845bbd576bfe1cb50411bb45a68', 'f826a22878a6f209c5aabb91fb5253b128d443734bea31942bf8a0fba50042d7');


--
-- Data for Name: connection_members; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.connection_members VALUES ('f9e70aa8-d50c-462e-8781-6448a31e0061', 0, 'localhost', 'demo-ha-1', 'a1dae5aa1409b29a');
INSERT INTO public.connection_members VALUES ('f9e70aa8-d50c-462e-8781-6448a31e0061', 1, 'localhost', 'demo-ha-2', '9e8d67486736180a');
INSERT INTO public.connection_members VALUES ('5bd2fc6e-5ace-4422-86d0-3c38bdebd214', 0, 'localhost', 'demo-single', '019faf30cfca7217');


--
-- Data for Name: connections; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.connections VALUES ('f9e70aa8-d50c-462e-8781-6448a31e0061', 'demo-ha', 'SoftHSM2 tokens set up by luna-server in its data directory', true, true, '\xe43733a7c93d697b9fb1bea8c96587bbb8aa285fd38d3176bf907a7f936ce74df8b516d9af16802ecc84619c957b42d1af43430e', 1796658864608922, 1796658864608922);
INSERT INTO public.connections VALUES ('5bd2fc6e-5ace-4422-86d0-3c38bdebd214', 'demo-single', 'SoftHSM2 tokens set up by luna-server in its data directory', false, true, '\x652be4911d4bc85961f067025c1388357309623baa0601fc48f859a58704ba33897b4f2a961ee4c3c84b2497e8ab36ec7df3806f', 1796658864636136, 1796658864636136);


--
-- Data for Name: idempotent_requests; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.idempotent_requests VALUES ('admin', 'upgrade-aes-1', 'POST /api/v1/cckm/hsm/luna/keys', 'd15468ccfd0745bc95d5ddadfee1a4d8c65013f762b7387ce0b16f8a228ef226', 'fc05cc62-9f3e-47f0-8abf-89137ed76323', 1796658865204390);


--
-- Data for Name: jobs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.jobs VALUES ('4857d6b3-efc4-4312-a11b-63f5821ba39b', 'refresh', '["f777b7ae-35dc-49c0-890d-44df373538e2"]', 'completed', false, '{"f777b7ae-35dc-49c0-890d-44df373538e2":"completed"}', 1796658867638739, 1796658867659261, 1796658867659261);


--
-- Data for Name: key_counts; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.key_counts VALUES ('f777b7ae-35dc-49c0-890d-44df373538e2', 'in_progress', 0);
INSERT INTO public.key_counts VALUES ('f777b7ae-35dc-49c0-890d-44df373538e2', 'AVAILABLE', 3);


--
-- Data for Name: keys; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.keys VALUES ('fc05cc62-9f3e-47f0-8abf-89137ed76323', 'f777b7ae-35dc-49c0-890d-44df373538e2', 'demo-single', 'upgrade-aes', 'AVAILABLE', 'keycreate', 'completed', NULL, 'aes', 'secret key', 'CKM_AES_KEY_GEN', 'CKM_AES_KEY_GEN', 256, 'CKA_TOKEN,CKA_PRIVATE,CKA_ENCRYPT', '\xfc05cc629f3e47f08abf89137ed76323', 'fc05cc629f3e47f08abf89137ed7632304', '485630e4dfea0b02bec75dc2fed33b1ab3365efef4e6b17100e5d2dd0aa727e0', '{"019faf30cfca7217":"available"}', true, true, 'cckm', '', 0, NULL, false, 1796658865204051, 1796658865238325);
INSERT INTO public.keys VALUES ('7ab32ca5-2283-4eb8-a829-fe7ce6c645fb', 'f777b7ae-35dc-49c0-890d-44df373538e2', 'demo-single', 'upgrade-rsa', 'AVAILABLE', 'keycreate', 'completed', NULL, 'rsa', 'private key', 'CKM_RSA_PKCS_KEY_PAIR_GEN', 'CKM_RSA_PKCS_KEY_PAIR_GEN', 2048, 'CKA_TOKEN,CKA_PRIVATE,CKA_SIGN', '\x7ab32ca522834eb8a829fe7ce6c645fb', '7ab32ca522834eb8a829fe7ce6c645fb03', '7a2885615c057a88fcc1a14c37d6fe017d0dff345a2a6f7217a1dc6c749ea671', '{"019faf30cfca7217":"available"}', true, true, 'cckm', 'b5a73e8652978449249f7732dc3d5c92be833fa342876c9cfd0c19cc0512c2d66a168c0b5bd9fdca46afd2f98d6f088931ba2537073226baf8389cdc51701836b2f96ca4bffd0d3dc2e0555da49fdd1102622d50c8495b53fd22ff0001cae842c1ca8218885b9e1c951059be17edf5304af3474a1c2bb0c1d0e8066481f2095816cc28feff1486051431b01dfe240ef73732427b59b6b60ac8e9741a08ea838d129449e7514dd3e4d0959355eccb8fd4cd69935bf2b28dbbeb0e1f09d24fb23afbd02bfcf0d73c65978724b8c5d398b97f0bf9f13a9d1cd8662472ebc2550b3dcc5c8bc2ebc09510859e314048c365ba158b1ee11d268e1eb2d856687c26b83d', 65537, 'c2e3fe68-6016-43af-9fde-80f004cccf29', false, 1796658865375808, 1796658866110933);
INSERT INTO public.keys VALUES ('c2e3fe68-6016-43af-9fde-80f004cccf29', 'f777b7ae-35dc-49c0-890d-44df373538e2', 'demo-single', 'upgrade-rsa', 'AVAILABLE', 'keycreate', 'completed', NULL, 'rsa', 'public key', 'CKM_RSA_PKCS_KEY_PAIR_GEN', 'CKM_RSA_PKCS_KEY_PAIR_GEN', 2048, 'CKA_TOKEN,CKA_PRIVATE,CKA_VERIFY', '\x7ab32ca522834eb8a829fe7ce6c645fb', '7ab32ca522834eb8a829fe7ce6c645fb02', '1cec76c943189906d767d95393c2da1f43ff59a53dc62bf83b6e57bdc4bafb3e', '{"019faf30cfca7217":"available"}', true, true, 'cckm', 'b5a73e8652978449249f7732dc3d5c92be833fa342876c9cfd0c19cc0512c2d66a168c0b5bd9fdca46afd2f98d6f088931ba2537073226baf8389cdc51701836b2f96ca4bffd0d3dc2e0555da49fdd1102622d50c8495b53fd22ff0001cae842c1ca8218885b9e1c951059be17edf5304af3474a1c2bb0c1d0e8066481f2095816cc28feff1486051431b01dfe240ef73732427b59b6b60ac8e9741a08ea838d129449e7514dd3e4d0959355eccb8fd4cd69935bf2b28dbbeb0e1f09d24fb23afbd02bfcf0d73c65978724b8c5d398b97f0bf9f13a9d1cd8662472ebc2550b3dcc5c8bc2ebc09510859e314048c365ba158b1ee11d268e1eb2d856687c26b83d', 65537, '7ab32ca5-2283-4eb8-a829-fe7ce6c645fb', false, 1796658865375808, 1796658866110933);


--
-- Data for Name: operations; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.operations VALUES ('103f323a-6339-4b30-a483-b2c10596d566', 'keycreate', 'fc05cc62-9f3e-47f0-8abf-89137ed76323', '{"kind":"create_key","key_id":"fc05cc62-9f3e-47f0-8abf-89137ed76323","public_key_id":null}', 'succeeded', 1, NULL, NULL, NULL, 1796658865204051, 1796658865238325);
INSERT INTO public.operations VALUES ('29a5850d-d7f3-4b9d-b0ef-a7a9d04f0200', 'keycreate', '7ab32ca5-2283-4eb8-a829-fe7ce6c645fb', '{"kind":"create_key","key_id":"7ab32ca5-2283-4eb8-a829-fe7ce6c645fb","public_key_id":"c2e3fe68-6016-43af-9fde-80f004cccf29"}', 'succeeded', 1, NULL, NULL, NULL, 1796658865375808, 1796658866110933);
INSERT INTO public.operations VALUES ('8689c107-f1ae-4734-b623-75a8acc3c208', 'job', '4857d6b3-efc4-4312-a11b-63f5821ba39b', '{"kind":"run_job","job_id":"4857d6b3-efc4-4312-a11b-63f5821ba39b"}', 'succeeded', 1, NULL, NULL, NULL, 1796658867638739, 1796658867661149);


--
-- Data for Name: partitions; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.partitions VALUES ('12f72741-dab1-4fdb-99e4-6a7fbfb42834', 'f9e70aa8-d50c-462e-8781-6448a31e0061', 'demo-ha-1', 'a1dae5aa1409b29a', true, 1796658864615386, 1796658864615386);
INSERT INTO public.partitions VALUES ('f777b7ae-35dc-49c0-890d-44df373538e2', '5bd2fc6e-5ace-4422-86d0-3c38bdebd214', 'demo-single', '019faf30cfca7217', false, 1796658864640326, 1796658864640326);


--
-- Data for Name: refresh_tokens; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.refresh_tokens VALUES ('3a88ef782d5292a87d97dc2175bd6b9715c95df8e06373b65682636ffda5f9cb', 'b3d93e01-6fc0-4322-b62e-65b6252c6329', 1796745265015341, 1796658865015341);


--
-- Data for Name: running_jobs; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: users; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.users VALUES ('b3d93e01-6fc0-4322-b62e-65b6252c6329', 'admin', '$argon2id$v=19$m=19456,t=2,p=1$oz4Fws8yryqUXu8Dc5J1Qg$P4F6j7tWMNEkW3f/FKnztNwZvI5CNx4Ey5OJEKr3O+A', 'admin', 1796658864714995, 1796658864714995);
INSERT INTO public.users VALUES ('904ff64e-2ebb-455d-a3ff-9506e9f18c00', 'operator', '$argon2id$v=19$m=19456,t=2,p=1$7rUY+9yFPRPbP8karDjArg$Fk176flVTne6iVvUlyAerRkHczoZ8h35OZdd2iD0BZ0', '', 1796658865619125, 1796658865619125);


--
-- Name: __diesel_schema_migrations __diesel_schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.__diesel_schema_migrations
    ADD CONSTRAINT __diesel_schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: audit_records audit_records_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_records
    ADD CONSTRAINT audit_records_pkey PRIMARY KEY (seq);


--
-- Name: connection_members connection_members_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.connection_members
    ADD CONSTRAINT connection_members_pkey PRIMARY KEY (connection_id, "position");


--
-- Name: connections connections_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.connections
    ADD CONSTRAINT connections_name_key UNIQUE (name);


--
-- Name: connections connections_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.connections
    ADD CONSTRAINT connections_pkey PRIMARY KEY (id);


--
-- Name: idempotent_requests idempotent_requests_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.idempotent_requests
    ADD CONSTRAINT idempotent_requests_pkey PRIMARY KEY (caller, idempotency_key);


--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);


--
-- Name: key_counts key_counts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.key_counts
    ADD CONSTRAINT key_counts_pkey PRIMARY KEY (partition_id, status);


--
-- Name: keys keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.keys
    ADD CONSTRAINT keys_pkey PRIMARY KEY (id);


--
-- Name: operations operations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.operations
    ADD CONSTRAINT operations_pkey PRIMARY KEY (id);


--
-- Name: partitions partitions_connection_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.partitions
    ADD CONSTRAINT partitions_connection_id_key UNIQUE (connection_id);


--
-- Name: partitions partitions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.partitions
    ADD CONSTRAINT partitions_pkey PRIMARY KEY (id);


--
-- Name: refresh_tokens refresh_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.refresh_tokens
    ADD CONSTRAINT refresh_tokens_pkey PRIMARY KEY (token_hash);


--
-- Name: running_jobs running_jobs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.running_jobs
    ADD CONSTRAINT running_jobs_pkey PRIMARY KEY (job_type, partition_id);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: users users_username_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_username_key UNIQUE (username);


--
-- Name: audit_records_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_records_at ON public.audit_records USING btree (at);


--
-- Name: audit_records_user; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_records_user ON public.audit_records USING btree (username, seq);


--
-- Name: connections_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX connections_created ON public.connections USING btree (created_at, id);


--
-- Name: jobs_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX jobs_status ON public.jobs USING btree (job_type, overall_status);


--
-- Name: jobs_type_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX jobs_type_created ON public.jobs USING btree (job_type, created_at, id);


--
-- Name: keys_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_created ON public.keys USING btree (created_at, id);


--
-- Name: keys_fingerprint; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_fingerprint ON public.keys USING btree (sha_256_fingerprint);


--
-- Name: keys_label; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_label ON public.keys USING btree (label);


--
-- Name: keys_link; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_link ON public.keys USING btree (link_id);


--
-- Name: keys_partition_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_partition_created ON public.keys USING btree (partition_id, created_at, id);


--
-- Name: keys_partition_object; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_partition_object ON public.keys USING btree (partition_id, object_uid);


--
-- Name: keys_partition_status_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_partition_status_created ON public.keys USING btree (partition_id, status, created_at, id);


--
-- Name: keys_partition_status_updated; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_partition_status_updated ON public.keys USING btree (partition_id, status, updated_at, id);


--
-- Name: keys_partition_updated; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_partition_updated ON public.keys USING btree (partition_id, updated_at, id);


--
-- Name: keys_status_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_status_created ON public.keys USING btree (status, created_at, id);


--
-- Name: keys_status_updated; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_status_updated ON public.keys USING btree (status, updated_at, id);


--
-- Name: keys_updated; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX keys_updated ON public.keys USING btree (updated_at, id);


--
-- Name: operations_claim; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX operations_claim ON public.operations USING btree (state, created_at);


--
-- Name: operations_target; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX operations_target ON public.operations USING btree (target_id);


--
-- Name: partitions_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX partitions_created ON public.partitions USING btree (created_at, id);


--
-- Name: partitions_label; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX partitions_label ON public.partitions USING btree (partition_label);


--
-- Name: refresh_tokens_user; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX refresh_tokens_user ON public.refresh_tokens USING btree (user_id);


--
-- Name: keys keys_count_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER keys_count_delete AFTER DELETE ON public.keys FOR EACH ROW EXECUTE FUNCTION public.keys_count();


--
-- Name: keys keys_count_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER keys_count_insert AFTER INSERT ON public.keys FOR EACH ROW EXECUTE FUNCTION public.keys_count();


--
-- Name: keys keys_count_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER keys_count_update AFTER UPDATE OF partition_id, status ON public.keys FOR EACH ROW WHEN (((old.partition_id IS DISTINCT FROM new.partition_id) OR (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION public.keys_count();


--
-- Name: connection_members connection_members_connection_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.connection_members
    ADD CONSTRAINT connection_members_connection_id_fkey FOREIGN KEY (connection_id) REFERENCES public.connections(id) ON DELETE CASCADE;


--
-- Name: key_counts key_counts_partition_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.key_counts
    ADD CONSTRAINT key_counts_partition_id_fkey FOREIGN KEY (partition_id) REFERENCES public.partitions(id) ON DELETE CASCADE;


--
-- Name: keys keys_partition_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.keys
    ADD CONSTRAINT keys_partition_id_fkey FOREIGN KEY (partition_id) REFERENCES public.partitions(id) ON DELETE CASCADE;


--
-- Name: partitions partitions_connection_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.partitions
    ADD CONSTRAINT partitions_connection_id_fkey FOREIGN KEY (connection_id) REFERENCES public.connections(id);


--
-- Name: refresh_tokens refresh_tokens_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.refresh_tokens
    ADD CONSTRAINT refresh_tokens_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;


--
-- Name: running_jobs running_jobs_job_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.running_jobs
    ADD CONSTRAINT running_jobs_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--


