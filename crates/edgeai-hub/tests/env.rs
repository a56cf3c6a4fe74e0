//! HubOptions::from_env reads the environment like huggingface_hub. One test in its own binary:
//! it changes process environment variables.

use edgeai_hub::{HubOptions, DEFAULT_ENDPOINT};

#[test]
fn options_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    for var in [
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HOME",
        "HF_HUB_OFFLINE",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("XDG_CACHE_HOME", dir.path().join("xdg"));
    std::env::set_var("HOME", dir.path().join("home"));
    let o = HubOptions::from_env(dir.path().join("cache"));
    assert_eq!(o.endpoint, DEFAULT_ENDPOINT);
    assert_eq!(o.token, None);
    assert!(!o.offline);
    assert!(o.progress);
    assert_eq!(o.cache_dir, dir.path().join("cache"));

    // The file `huggingface-cli login` writes.
    std::fs::create_dir_all(dir.path().join("xdg/huggingface")).unwrap();
    std::fs::write(dir.path().join("xdg/huggingface/token"), "hf_from_file\n").unwrap();
    assert_eq!(
        HubOptions::from_env(dir.path().into()).token.as_deref(),
        Some("hf_from_file")
    );
    std::fs::write(dir.path().join("tok"), "hf_path\n").unwrap();
    std::env::set_var("HF_TOKEN_PATH", dir.path().join("tok"));
    assert_eq!(
        HubOptions::from_env(dir.path().into()).token.as_deref(),
        Some("hf_path")
    );
    std::env::set_var("HUGGING_FACE_HUB_TOKEN", "hf_legacy");
    assert_eq!(
        HubOptions::from_env(dir.path().into()).token.as_deref(),
        Some("hf_legacy")
    );
    std::env::set_var("HF_TOKEN", " hf_env ");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:1234");
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let o = HubOptions::from_env(dir.path().into());
    assert_eq!(o.token.as_deref(), Some("hf_env"));
    assert_eq!(o.endpoint, "http://127.0.0.1:1234");
    assert!(o.offline);
    assert!(!format!("{o:?}").contains("hf_env"));
}
