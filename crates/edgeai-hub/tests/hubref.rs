//! `hf://org/name[@revision]` parsing.

use edgeai_hub::{is_hub_ref, Error, HubRef};
use proptest::prelude::*;

#[test]
fn parses_repo_and_revision() {
    let r: HubRef = "hf://HuggingFaceTB/SmolLM2-135M-Instruct".parse().unwrap();
    assert_eq!(r.repo, "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(r.revision, "main");
    assert!(!r.is_commit());

    let r: HubRef = "hf://sentence-transformers/all-MiniLM-L6-v2@v1.0_rc.2"
        .parse()
        .unwrap();
    assert_eq!(r.repo, "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(r.revision, "v1.0_rc.2");

    let commit = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";
    let r: HubRef = format!("hf://org/name@{commit}").parse().unwrap();
    assert_eq!(r.revision, commit);
    assert!(r.is_commit());

    let r: HubRef = "hf://org/name@refs/pr/1".parse().unwrap();
    assert_eq!(r.revision, "refs/pr/1");
    assert_eq!(r.to_string(), "hf://org/name@refs/pr/1");
    assert!(is_hub_ref("hf://a/b"));
    assert!(!is_hub_ref("./models/hf"));
}

#[test]
fn rejects_bad_references_with_a_reason() {
    let cases = [
        ("org/name", "does not start with hf://"),
        (
            "https://huggingface.co/org/name",
            "does not start with hf://",
        ),
        ("hf://", "empty"),
        ("hf://name-only", "org/name"),
        ("hf://a/b/c", "org/name"),
        ("hf:///name", "empty org or name"),
        ("hf://org/", "empty org or name"),
        ("hf://org/name@", "revision after `@` is empty"),
        ("hf://org/na me", "contains ' '"),
        ("hf://org/name@main@v2", "contains '@'"),
        ("hf://org/-name", "starts or ends"),
        ("hf://org/name.", "starts or ends"),
        ("hf://org/a--b", "`--`"),
        ("hf://org/a..b", "`..`"),
        ("hf://org/name@../../etc", "not a valid git ref"),
        ("hf://org/name@a//b", "not a valid git ref"),
        ("hf://org/name@/main", "not a valid git ref"),
        ("hf://org/name@main/", "not a valid git ref"),
        ("hf://org/name@ma in", "contains ' '"),
        ("hf://org/näme", "contains 'ä'"),
    ];
    for (input, reason) in cases {
        let err = input.parse::<HubRef>().unwrap_err();
        assert!(matches!(err, Error::InvalidRef { .. }), "{input}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(reason), "{input}: {message}");
        assert!(
            err.hint().contains("hf://org/name@revision"),
            "{}",
            err.hint()
        );
    }
    let long = format!("hf://org/{}", "a".repeat(100));
    assert!(long
        .parse::<HubRef>()
        .unwrap_err()
        .to_string()
        .contains("at most 96"));
}

#[test]
fn hand_built_refs_are_validated_before_use() {
    let r = HubRef {
        repo: "../../etc".into(),
        revision: "main".into(),
    };
    assert!(r.validate().is_err());
    let r = HubRef {
        repo: "org/name".into(),
        revision: "../x".into(),
    };
    assert!(r.validate().is_err());
    let opts = edgeai_hub::HubOptions {
        endpoint: "http://127.0.0.1:9".into(),
        cache_dir: std::env::temp_dir(),
        offline: true,
        token: None,
        progress: false,
    };
    assert!(matches!(
        edgeai_hub::snapshot_download(&r, &opts),
        Err(Error::InvalidRef { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any string: an error or a reference that validates and prints back to itself.
    #[test]
    fn parser_never_panics(s in "\\PC*") {
        if let Ok(r) = s.parse::<HubRef>() {
            prop_assert!(r.validate().is_ok());
            let again: HubRef = r.to_string().parse().unwrap();
            prop_assert_eq!(again, r);
        }
    }

    #[test]
    fn parser_never_panics_near_valid(s in "(hf://)?[a-zA-Z0-9./@_ -]{0,40}") {
        if let Ok(r) = s.parse::<HubRef>() {
            prop_assert!(r.validate().is_ok());
            prop_assert!(!r.repo.contains(".."));
            prop_assert!(!r.revision.split('/').any(|p| p == ".." || p.is_empty()));
        }
    }

    #[test]
    fn valid_references_round_trip(
        org in "[a-zA-Z0-9]([a-zA-Z0-9_]{0,20}[a-zA-Z0-9])?",
        name in "[a-zA-Z0-9]([a-zA-Z0-9_]{0,30}[a-zA-Z0-9])?",
        rev in proptest::option::of("[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}(/[a-zA-Z0-9][a-zA-Z0-9_-]{0,10}){0,2}"),
    ) {
        let input = match &rev {
            Some(rev) => format!("hf://{org}/{name}@{rev}"),
            None => format!("hf://{org}/{name}"),
        };
        let r: HubRef = input.parse().unwrap();
        prop_assert_eq!(r.repo, format!("{org}/{name}"));
        prop_assert_eq!(r.revision, rev.unwrap_or_else(|| "main".into()));
    }
}
