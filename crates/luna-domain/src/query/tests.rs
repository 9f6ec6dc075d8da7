//! Tests of list queries: filters, sorting, paging and their sentences.

use super::*;

/// A value the described kind promises to accept.
fn sample(kind: &ParamKind) -> String {
    match kind {
        ParamKind::Text => "some text".into(),
        ParamKind::Id => Uuid::nil().to_string(),
        ParamKind::WholeNumber { max, .. } => max.to_string(),
        ParamKind::PageSize { .. } => LIMIT_ALL.into(),
        ParamKind::Boolean => "false".into(),
        ParamKind::Timestamp => "2026-12-07T10:00:00.5+01:00".into(),
        ParamKind::OneOf(values) => values[values.len() - 1].to_owned(),
        ParamKind::SortFields(fields) => format!("-{},{}", fields[0], fields[fields.len() - 1]),
    }
}

fn described_params_are_exactly_the_accepted_ones<F: Filters>() {
    let params = list_params::<F>();
    assert_eq!(params.len(), 3 + F::NAMES.len());
    for param in &params {
        let accepted = vec![(param.name.to_owned(), sample(&param.kind))];
        assert!(
            parse_list_query::<F>(&accepted).is_ok(),
            "{} = {:?}",
            param.name,
            accepted
        );
        if let ParamKind::WholeNumber { min, max } = param.kind {
            for outside in [min - 1, max + 1] {
                let refused = vec![(param.name.to_owned(), outside.to_string())];
                assert!(
                    parse_list_query::<F>(&refused).is_err(),
                    "{} = {outside}",
                    param.name
                );
            }
        }
    }
    let unknown = vec![("no_such_filter".to_owned(), "x".to_owned())];
    assert!(parse_list_query::<F>(&unknown).is_err());
}

#[test]
fn a_field_sorts_once_by_its_first_mention() {
    let repeated = parse_list_query::<ConnectionFilters>(&pairs("sort=name,-createdAt,-name,name")).unwrap();
    assert_eq!(
        repeated.sort,
        vec![
            SortKey {
                field: ConnectionSortField::Name,
                direction: Direction::Ascending
            },
            SortKey {
                field: ConnectionSortField::CreatedAt,
                direction: Direction::Descending
            },
        ]
    );
}

#[test]
fn every_list_describes_the_parameters_it_parses() {
    described_params_are_exactly_the_accepted_ones::<KeyFilters>();
    described_params_are_exactly_the_accepted_ones::<JobFilters>();
    described_params_are_exactly_the_accepted_ones::<PartitionFilters>();
    described_params_are_exactly_the_accepted_ones::<UserFilters>();
    described_params_are_exactly_the_accepted_ones::<AuditFilters>();
    described_params_are_exactly_the_accepted_ones::<ConnectionFilters>();
    described_params_are_exactly_the_accepted_ones::<ServerFilters>();
}

fn pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_reference_list_query_parses() {
    let q: ListQuery<KeyFilters> = parse_list_query(&pairs("skip=0&limit=10&sort=updatedAt")).unwrap();
    assert_eq!(q.page, Page { skip: 0, limit: 10 });
    assert_eq!(
        q.sort,
        vec![SortKey {
            field: KeySortField::UpdatedAt,
            direction: Direction::Ascending
        }]
    );
    assert_eq!(q.filters, KeyFilters::default());
}

#[test]
fn every_key_filter_parses_and_combines() {
    let id = "a79f373b-4f94-4bf0-8768-5b809cb43c46";
    let query = format!(
        "id={id}&label=hsm-key&algorithm=rsa&mechanism=CKM_RSA_X9_31_KEY_PAIR_GEN&size=2048&byok_key=true\
         &partition_id={id}&partition_label=p&status=AVAILABLE&object_type=private key&origin=cckm\
         &sha_256_fingerprint=ab&modulus=cd&link_id={id}&replicated=false&sort=label,-createdAt&skip=5&limit=1000"
    );
    let q: ListQuery<KeyFilters> = parse_list_query(&pairs(&query)).unwrap();
    let f = &q.filters;
    assert_eq!(f.size, Some(2048));
    assert_eq!(f.status, Some(KeyStatus::Available));
    assert_eq!(f.object_type, Some(ObjectType::PrivateKey));
    assert_eq!(f.replicated, Some(false));
    assert_eq!(f.link_id, Some(Uuid::parse_str(id).unwrap()));
    assert_eq!(
        q.sort[1],
        SortKey {
            field: KeySortField::CreatedAt,
            direction: Direction::Descending
        }
    );
    assert_eq!(q.page, Page { skip: 5, limit: 1000 });
    let all: ListQuery<KeyFilters> = parse_list_query(&pairs("limit=-1")).unwrap();
    assert_eq!(
        all.page,
        Page {
            skip: 0,
            limit: MAX_LIMIT
        },
        "CipherTrust's \"all\""
    );
    assert_eq!(KeyFilters::NAMES.len(), 15);
}

#[test]
fn bad_list_queries_are_refused_with_what_is_allowed() {
    for (query, needle) in [
        (
            "limit=0",
            "limit must be a whole number from 1 to 1000; got \"0\"",
        ),
        ("limit=1001", "from 1 to 1000"),
        ("limit=-2", "from 1 to 1000"),
        ("skip=-1", "skip must be a whole number from 0"),
        ("skip=abc", "skip must be a whole number"),
        (
            "sort=colour",
            "sort field \"colour\" is not supported; allowed: createdAt",
        ),
        ("sort=label,", "empty field name"),
        (
            "status=gone",
            "status \"gone\" is not supported; allowed: in_progress, AVAILABLE, DELETED, FAILED",
        ),
        ("size=big", "size must be a whole number"),
        ("byok_key=yes", "byok_key must be true or false"),
        ("id=42", "id \"42\" is not a UUID"),
        (
            "colour=red",
            "unknown query parameter \"colour\"; allowed: skip, limit, sort, id, label",
        ),
        ("label=a&label=b", "given more than once"),
    ] {
        let err = parse_list_query::<KeyFilters>(&pairs(query))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{query}: {err}");
    }
}

#[test]
fn job_partition_and_connection_filters_parse() {
    let q: ListQuery<JobFilters> =
        parse_list_query(&pairs("overall_status=cancelled&sort=-createdAt")).unwrap();
    assert_eq!(q.filters.overall_status, Some(JobStatus::Cancelled));
    assert!(parse_list_query::<JobFilters>(&pairs("overall_status=done")).is_err());
    let q: ListQuery<PartitionFilters> = parse_list_query(&pairs("ha_enabled=true")).unwrap();
    assert_eq!(q.filters.ha_enabled, Some(true));
    let q: ListQuery<ConnectionFilters> = parse_list_query(&pairs("name=hsm-a&is_ha_enabled=false")).unwrap();
    assert_eq!(q.filters.name.as_deref(), Some("hsm-a"));
}
