//! Diesel's view of the tables in `migrations/{sqlite,postgres}`; the two
//! backends share these column types exactly.

diesel::table! {
    connections (id) {
        id -> Text,
        name -> Text,
        description -> Text,
        is_ha_enabled -> Bool,
        remap_rsa_mechanisms -> Bool,
        pin_ciphertext -> Binary,
        created_at -> BigInt,
        updated_at -> BigInt,
        server_id -> Nullable<Text>,
        last_connection_ok -> Nullable<Bool>,
        last_connection_at -> Nullable<BigInt>,
        last_connection_error -> Nullable<Text>,
        products -> Text,
        meta -> Nullable<Text>,
    }
}

diesel::table! {
    hsm_servers (id) {
        id -> Text,
        hostname -> Text,
        description -> Text,
        certificate_pem -> Text,
        certificate_subject -> Text,
        certificate_issuer -> Text,
        certificate_not_before -> BigInt,
        certificate_not_after -> BigInt,
        certificate_sha256 -> Text,
        products -> Text,
        meta -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    connection_members (connection_id, position) {
        connection_id -> Text,
        position -> Integer,
        hostname -> Text,
        partition_label -> Text,
        serial_number -> Text,
    }
}

diesel::table! {
    partitions (id) {
        id -> Text,
        connection_id -> Text,
        partition_label -> Text,
        serial_number -> Text,
        ha_enabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    keys (id) {
        id -> Text,
        partition_id -> Text,
        partition_label -> Text,
        label -> Text,
        status -> Text,
        operation -> Text,
        operation_status -> Text,
        operation_error -> Nullable<Text>,
        algorithm -> Nullable<Text>,
        object_type -> Nullable<Text>,
        mechanism -> Nullable<Text>,
        generated_with -> Nullable<Text>,
        size -> Integer,
        attributes -> Text,
        cka_id -> Binary,
        object_uid -> Text,
        sha_256_fingerprint -> Text,
        replication_info -> Text,
        replicated -> Bool,
        byok_key -> Bool,
        origin -> Text,
        modulus -> Text,
        exponent -> BigInt,
        link_id -> Nullable<Text>,
        ha_enabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    audit_records (seq) {
        seq -> BigInt,
        at -> BigInt,
        username -> Text,
        action -> Text,
        resource_id -> Text,
        outcome -> Text,
        request_id -> Text,
        source -> Text,
        previous_hash -> Text,
        hash -> Text,
        format -> Integer,
        user_id -> Text,
        resource_type -> Text,
        instance -> Text,
    }
}

diesel::table! {
    audit_sinks (name) {
        name -> Text,
        delivered_seq -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Written only by `counts.rs`, once per transaction that writes keys.
    key_counts (partition_id, status) {
        partition_id -> Text,
        status -> Text,
        n -> BigInt,
    }
}

diesel::table! {
    /// Written only by `counts.rs`, once per transaction that writes keys. `field` 0 counts
    /// `created_at`, 1 `updated_at`; `bucket` is the timestamp shifted right
    /// by the level's bits.
    key_time_counts (field, level, bucket, partition_id, status) {
        field -> SmallInt,
        level -> SmallInt,
        bucket -> BigInt,
        partition_id -> Text,
        status -> Text,
        n -> BigInt,
    }
}

diesel::table! {
    operations (id) {
        id -> Text,
        kind -> Text,
        target_id -> Text,
        payload -> Text,
        state -> Text,
        attempts -> Integer,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        partition_id -> Nullable<Text>,
        requested_by_id -> Nullable<Text>,
        requested_by -> Nullable<Text>,
        request_id -> Nullable<Text>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        job_type -> Text,
        partitions -> Text,
        overall_status -> Text,
        abort_requested -> Bool,
        detailed_status -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        completed_at -> Nullable<BigInt>,
        schedule_id -> Nullable<Text>,
        schedule_name -> Nullable<Text>,
    }
}

diesel::table! {
    xks_keystores (id) {
        id -> Text,
        name -> Text,
        uri_path_prefix -> Text,
        region -> Text,
        partition_id -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    xks_credentials (access_key_id) {
        access_key_id -> Text,
        keystore_id -> Text,
        secret_ciphertext -> Binary,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    schedules (id) {
        id -> Text,
        name -> Text,
        description -> Text,
        run_at -> Text,
        start_date -> Nullable<BigInt>,
        end_date -> Nullable<BigInt>,
        disabled -> Bool,
        run_on -> Text,
        job_type -> Text,
        partitions -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        fired_through -> BigInt,
        next_run_at -> Nullable<BigInt>,
        last_run_at -> Nullable<BigInt>,
        last_job_id -> Nullable<Text>,
        last_outcome -> Nullable<Text>,
    }
}

diesel::table! {
    running_jobs (job_type, partition_id) {
        job_type -> Text,
        partition_id -> Text,
        job_id -> Text,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        password_hash -> Text,
        user_groups -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        session_id -> Text,
        expires_at -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    idempotent_requests (caller, idempotency_key) {
        caller -> Text,
        idempotency_key -> Text,
        route -> Text,
        body_digest -> Text,
        resource_id -> Text,
        created_at -> BigInt,
    }
}

diesel::joinable!(connection_members -> connections (connection_id));
diesel::joinable!(partitions -> connections (connection_id));
diesel::joinable!(connections -> hsm_servers (server_id));
diesel::joinable!(keys -> partitions (partition_id));
diesel::joinable!(running_jobs -> jobs (job_id));
diesel::joinable!(xks_credentials -> xks_keystores (keystore_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(sessions -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_records,
    audit_sinks,
    connections,
    connection_members,
    hsm_servers,
    partitions,
    keys,
    key_counts,
    key_time_counts,
    operations,
    jobs,
    running_jobs,
    schedules,
    xks_credentials,
    xks_keystores,
    users,
    refresh_tokens,
    sessions,
    idempotent_requests,
);
