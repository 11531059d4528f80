//! Finding model files: local folders and the Hugging Face cache (offline).
//! No test here needs the network.

use std::fs;
use std::path::{Path, PathBuf};

use softtune::model::source::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2")
}

fn offline() -> HubOptions {
    HubOptions {
        revision: None,
        offline: true,
        token: None,
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

/// A Python-layout cache for `owner/tiny`: refs/main → snapshots/COMMIT,
/// config.json and model.safetensors as symlinks into blobs/ (plain copies
/// where `symlinks` is false), no tokenizer.json.
fn fake_cache(symlinks: bool) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--owner--tiny");
    write(&repo.join("refs/main"), COMMIT);
    let snap = repo.join("snapshots").join(COMMIT);
    fs::create_dir_all(&snap).unwrap();
    for (name, blob, body) in [
        ("config.json", "aaaa1111", "{\"model_type\": \"gpt2\"}"),
        ("model.safetensors", "bbbb2222", "not really safetensors"),
    ] {
        let blob_path = repo.join("blobs").join(blob);
        write(&blob_path, body);
        if symlinks {
            #[cfg(unix)]
            std::os::unix::fs::symlink(Path::new("../../blobs").join(blob), snap.join(name))
                .unwrap();
            #[cfg(not(unix))]
            fs::copy(&blob_path, snap.join(name)).unwrap();
        } else {
            fs::copy(&blob_path, snap.join(name)).unwrap();
        }
    }
    cache
}

#[test]
fn local_fixture_folder_resolves() {
    let dir = fixture();
    let given = dir.to_str().unwrap();
    let files = resolve(given, &offline()).unwrap();
    assert_eq!(files.id, given);
    assert_eq!(files.root, dir);
    assert_eq!(files.config, dir.join("config.json"));
    assert_eq!(files.tokenizer, Some(dir.join("tokenizer.json")));
    assert_eq!(files.weights, vec![dir.join("model.safetensors")]);
    assert_eq!(files.index, None);
    assert!(!files.from_hub);

    let quick = resolve_config_only(given, &offline()).unwrap();
    assert_eq!(quick.config, dir.join("config.json"));
    assert!(!quick.from_hub);
}

#[test]
fn folder_without_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("model.safetensors"), b"x").unwrap();
    let given = dir.path().to_str().unwrap();
    let msg = err_text(resolve(given, &offline()));
    assert!(msg.contains("no config.json"), "{msg}");
    assert!(msg.contains(given), "{msg}");
}

#[test]
fn folder_without_weights_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("config.json"), "{}");
    let given = dir.path().to_str().unwrap();
    let msg = err_text(resolve(given, &offline()));
    assert!(msg.contains("no model weights"), "{msg}");
    // Config-only inspection does not need the weights.
    let quick = resolve_config_only(given, &offline()).unwrap();
    assert!(quick.weights.is_empty());
}

#[test]
fn sharded_index_resolves_sorted_unique_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("config.json"), "{}");
    write(
        &d.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {
            "b": "model-00002-of-00002.safetensors",
            "a": "model-00001-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors"}}"#,
    );
    write(&d.join("model-00001-of-00002.safetensors"), "x");
    write(&d.join("model-00002-of-00002.safetensors"), "x");
    let files = resolve(d.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(
        files.weights,
        vec![
            d.join("model-00001-of-00002.safetensors"),
            d.join("model-00002-of-00002.safetensors"),
        ]
    );
    assert_eq!(files.index, Some(d.join("model.safetensors.index.json")));
    assert_eq!(files.tokenizer, None);
}

#[test]
fn sharded_index_with_missing_shard_errors_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("config.json"), "{}");
    write(
        &d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors",
                           "b": "model-00002-of-00002.safetensors"}}"#,
    );
    write(&d.join("model-00001-of-00002.safetensors"), "x");
    let msg = err_text(resolve(d.to_str().unwrap(), &offline()));
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
    // Config-only inspection still works and reports the index.
    let quick = resolve_config_only(d.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(quick.index, Some(d.join("model.safetensors.index.json")));
    assert!(quick.weights.is_empty());
}

#[test]
fn index_escaping_the_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("config.json"), "{}");
    write(
        &d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "../elsewhere.safetensors"}}"#,
    );
    let msg = err_text(resolve(d.to_str().unwrap(), &offline()));
    assert!(msg.contains("../elsewhere.safetensors"), "{msg}");
}

#[test]
fn other_pickle_files_error_with_conversion_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("config.json"), "{}");
    write(&d.join("model.pt"), "pickle");
    let msg = err_text(resolve(d.to_str().unwrap(), &offline()));
    assert!(msg.contains("found model.pt"), "{msg}");
    assert!(msg.contains("rename it pytorch_model.bin"), "{msg}");
    assert!(msg.contains("safe_serialization=True"), "{msg}");
}

#[test]
fn pytorch_bin_is_read_when_there_is_no_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("config.json"), "{}");
    write(&d.join("pytorch_model.bin"), "zip");
    let files = resolve(d.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(files.weights, vec![d.join("pytorch_model.bin")]);
    // safetensors wins where a repository has both.
    write(&d.join("model.safetensors"), "st");
    let files = resolve(d.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(files.weights, vec![d.join("model.safetensors")]);
}

#[test]
fn offline_cache_with_only_pytorch_bin() {
    let cache = fake_cache(false);
    let snap = cache
        .path()
        .join("models--owner--tiny/snapshots")
        .join(COMMIT);
    fs::rename(
        snap.join("model.safetensors"),
        snap.join("pytorch_model.bin"),
    )
    .unwrap();
    let files = resolve_in_cache("owner/tiny", "main", cache.path()).unwrap();
    assert_eq!(files.weights, vec![snap.join("pytorch_model.bin")]);
}

#[test]
fn path_that_is_not_a_folder_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let given = missing.to_str().unwrap();
    let msg = err_text(resolve(given, &offline()));
    assert!(msg.contains(&format!("{given} is not a folder")), "{msg}");

    let file = dir.path().join("config.json");
    write(&file, "{}");
    let given = file.to_str().unwrap();
    let msg = err_text(resolve(given, &offline()));
    assert!(msg.contains(&format!("{given} is not a folder")), "{msg}");

    let msg = err_text(resolve("./surely/not/here", &offline()));
    assert!(msg.contains("./surely/not/here is not a folder"), "{msg}");
}

#[test]
fn invalid_hub_id_errors() {
    let msg = err_text(resolve("owner/na me", &offline()));
    assert!(msg.contains("owner/na me"), "{msg}");
    assert!(msg.contains("model id"), "{msg}");
}

#[test]
fn offline_cache_with_symlinks_resolves_refs_main() {
    let cache = fake_cache(true);
    let files = resolve_in_cache("owner/tiny", "main", cache.path()).unwrap();
    let snap = cache
        .path()
        .join("models--owner--tiny/snapshots")
        .join(COMMIT);
    assert_eq!(files.id, "owner/tiny");
    assert_eq!(files.root, snap);
    assert_eq!(files.config, snap.join("config.json"));
    assert_eq!(files.weights, vec![snap.join("model.safetensors")]);
    assert_eq!(files.tokenizer, None);
    assert_eq!(files.index, None);
    assert!(files.from_hub);
    assert_eq!(
        fs::read_to_string(&files.config).unwrap(),
        "{\"model_type\": \"gpt2\"}"
    );
}

#[test]
fn offline_cache_with_plain_copies_and_commit_revision() {
    let cache = fake_cache(false);
    let files = resolve_in_cache("owner/tiny", COMMIT, cache.path()).unwrap();
    assert!(files.root.ends_with(COMMIT));
    assert_eq!(files.weights.len(), 1);
    // By branch name, too.
    let files = resolve_in_cache("owner/tiny", "main", cache.path()).unwrap();
    assert!(files.root.ends_with(COMMIT));
}

#[test]
fn offline_cache_dangling_symlink_counts_as_missing() {
    let cache = fake_cache(true);
    fs::remove_file(cache.path().join("models--owner--tiny/blobs/bbbb2222")).unwrap();
    let msg = err_text(resolve_in_cache("owner/tiny", "main", cache.path()));
    assert!(msg.contains("offline"), "{msg}");
}

#[test]
fn offline_not_cached_errors_mentioning_offline() {
    let cache = fake_cache(true);
    let msg = err_text(resolve_in_cache("owner/other", "main", cache.path()));
    assert!(msg.contains("owner/other"), "{msg}");
    assert!(msg.contains("offline"), "{msg}");
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert!(msg.contains(&cache.path().display().to_string()), "{msg}");

    // A known repo at an uncached branch is not cached either.
    let msg = err_text(resolve_in_cache("owner/tiny", "dev", cache.path()));
    assert!(msg.contains("revision dev"), "{msg}");
    assert!(msg.contains("offline"), "{msg}");

    // An empty cache folder.
    let empty = tempfile::tempdir().unwrap();
    let msg = err_text(resolve_in_cache("gpt2", "main", empty.path()));
    assert!(
        msg.contains("gpt2 is not in the Hugging Face cache"),
        "{msg}"
    );
}

#[test]
fn offline_cache_sharded_snapshot() {
    let cache = tempfile::tempdir().unwrap();
    let snap = cache.path().join("models--gpt2/snapshots").join(COMMIT);
    write(
        &cache.path().join("models--gpt2/refs/main"),
        &format!("{COMMIT}\n"),
    );
    write(&snap.join("config.json"), "{}");
    write(&snap.join("tokenizer.json"), "{}");
    write(
        &snap.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#,
    );
    write(&snap.join("s1.safetensors"), "x");
    let msg = err_text(resolve_in_cache("gpt2", "main", cache.path()));
    assert!(msg.contains("s2.safetensors"), "{msg}");
    assert!(msg.contains("offline"), "{msg}");

    write(&snap.join("s2.safetensors"), "x");
    let files = resolve_in_cache("gpt2", "main", cache.path()).unwrap();
    assert_eq!(
        files.weights,
        vec![snap.join("s1.safetensors"), snap.join("s2.safetensors")]
    );
    assert_eq!(files.tokenizer, Some(snap.join("tokenizer.json")));
    assert_eq!(files.index, Some(snap.join("model.safetensors.index.json")));
}

#[test]
fn options_debug_hides_token() {
    let opts = HubOptions {
        revision: None,
        offline: false,
        token: Some("hf_secret".into()),
    };
    assert!(!format!("{opts:?}").contains("hf_secret"));
}

/// Online, with the Hub unreachable (a closed local port), a cached model is
/// still found (hf-hub falls back to the cache on connection errors), and an
/// uncached one gives a one-line error naming the id and the ways out.
#[test]
fn online_with_unreachable_hub() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let opts = HubOptions {
        revision: None,
        offline: false,
        token: None,
    };

    let cache = fake_cache(true);
    // tokenizer.json is absent from the fake cache; mark it known-absent the
    // way the Hub client does, so that the offline fallback accepts that.
    write(
        &cache
            .path()
            .join("models--owner--tiny/.no_exist")
            .join(COMMIT)
            .join("tokenizer.json"),
        "",
    );
    let files =
        resolve_from_hub("owner/tiny", &opts, cache.path(), Some(&endpoint), Some(0)).unwrap();
    assert!(files.from_hub);
    assert!(files.root.ends_with(COMMIT));
    assert_eq!(files.tokenizer, None);
    assert_eq!(files.weights.len(), 1);

    // GPT-2's slow tokenizer files in the snapshot stand in for tokenizer.json; the optional
    // settings files beside them, neither cached nor reachable, are left out.
    let snap = cache
        .path()
        .join("models--owner--tiny/snapshots")
        .join(COMMIT);
    write(&snap.join("vocab.json"), "{}");
    write(&snap.join("merges.txt"), "#version: 0.2\n");
    let files =
        resolve_from_hub("owner/tiny", &opts, cache.path(), Some(&endpoint), Some(0)).unwrap();
    assert_eq!(files.tokenizer, Some(snap.join("vocab.json")));
    let files = resolve_in_cache("owner/tiny", "main", cache.path()).unwrap();
    assert_eq!(files.tokenizer, Some(snap.join("vocab.json")));

    // So does a sentencepiece tokenizer.model.
    std::fs::remove_file(snap.join("vocab.json")).unwrap();
    std::fs::remove_file(snap.join("merges.txt")).unwrap();
    write(&snap.join("tokenizer.model"), "spm");
    let files =
        resolve_from_hub("owner/tiny", &opts, cache.path(), Some(&endpoint), Some(0)).unwrap();
    assert_eq!(files.tokenizer, Some(snap.join("tokenizer.model")));

    let msg = err_text(resolve_from_hub(
        "owner/absent",
        &opts,
        cache.path(),
        Some(&endpoint),
        Some(0),
    ));
    assert!(msg.contains("owner/absent"), "{msg}");
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    assert!(msg.contains("HF_TOKEN"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn a_missing_tokenizer_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("config.json"), "{}");
    write(&d.join("pytorch_model.bin"), "zip");
    write(&d.join("vocab.json"), "{}");
    let files = resolve(d.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(files.tokenizer, None);
    let msg = err_text(files.tokenizer_path());
    assert!(msg.contains(&d.display().to_string()), "{msg}");
    assert!(msg.contains("no tokenizer.json"), "{msg}");
    assert!(msg.contains("AutoTokenizer.from_pretrained"), "{msg}");
}
