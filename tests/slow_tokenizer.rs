//! GPT-2's tokenizer built from the slow files (`vocab.json` + `merges.txt`, no
//! `tokenizer.json`) gives transformers' token ids (`tests/fixtures/slow_tokenizer/`, made by
//! `tests/fixtures/make_slow_tokenizer.py`), and bad files are clear errors.

mod common;

use std::fs;
use std::path::PathBuf;

use softtune::model::tokenizer::Tokenizer;

use common::{
    assert_matches_transformers, copy_folder, err_text, fixtures, model_folder, resolve_offline,
};

fn slow(name: &str) -> PathBuf {
    fixtures().join("slow_tokenizer").join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(slow("expected.json")).unwrap()).unwrap()
}

/// A writable copy of a fixture folder.
fn copy(name: &str) -> tempfile::TempDir {
    copy_folder(&slow(name))
}

#[test]
fn ids_match_transformers() {
    let want = expected();
    for name in ["plain", "prefix"] {
        let tok = Tokenizer::from_file(&slow(name).join("vocab.json")).unwrap();
        assert_matches_transformers(&tok, &want, name);
    }
    // Without a prefix space, paragraphs may be tokenized apart (the dataset's fast path).
    let plain = Tokenizer::from_file(&slow("plain").join("vocab.json")).unwrap();
    assert!(plain.paragraph_cuts_are_exact());
    let prefix = Tokenizer::from_file(&slow("prefix").join("vocab.json")).unwrap();
    assert!(!prefix.paragraph_cuts_are_exact());
}

/// On a whole corpus the built tokenizer agrees with the fast tokenizer.json of the same
/// vocabulary and merges, and decodes back to the text.
#[test]
fn corpus_ids_match_the_fast_tokenizer() {
    let text = fs::read_to_string(fixtures().join("tokenizer_corpus.txt")).unwrap();
    let fast = Tokenizer::from_file(&fixtures().join("tokenizer.json")).unwrap();
    let built = Tokenizer::from_file(&slow("plain").join("vocab.json")).unwrap();
    let ids = built.encode(&text).unwrap();
    assert!(ids.len() > 10_000, "{}", ids.len());
    assert_eq!(ids, fast.encode(&text).unwrap());
    assert_eq!(built.decode(&ids).unwrap(), text);
}

#[test]
fn a_folder_with_slow_files_resolves_to_its_vocab() {
    let dir = model_folder(&slow("plain"), "gpt2");
    let d = dir.path();
    let files = resolve_offline(d);
    assert_eq!(files.tokenizer, Some(d.join("vocab.json")));
    assert_eq!(files.tokenizer_path().unwrap(), d.join("vocab.json"));
    // tokenizer.json wins when both exist.
    fs::copy(fixtures().join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let files = resolve_offline(d);
    assert_eq!(files.tokenizer, Some(d.join("tokenizer.json")));
    // vocab.json alone is not enough.
    fs::remove_file(d.join("tokenizer.json")).unwrap();
    fs::remove_file(d.join("merges.txt")).unwrap();
    let files = resolve_offline(d);
    assert_eq!(files.tokenizer, None);
    let msg = err_text(files.tokenizer_path());
    assert!(
        msg.contains("no tokenizer.json, no vocab.json with merges.txt"),
        "{msg}"
    );
}

#[test]
fn another_tokenizer_class_is_refused_with_the_conversion() {
    let dir = copy("plain");
    let d = dir.path();
    fs::write(
        d.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "Qwen2Tokenizer"}"#,
    )
    .unwrap();
    let msg = err_text(Tokenizer::from_file(&d.join("vocab.json")));
    assert!(msg.contains("tokenizer_config.json"), "{msg}");
    assert!(msg.contains("Qwen2Tokenizer"), "{msg}");
    assert!(msg.contains("AutoTokenizer.from_pretrained"), "{msg}");
}

#[test]
fn added_token_ids_must_follow_the_vocabulary() {
    let dir = copy("plain");
    let d = dir.path();
    fs::write(d.join("added_tokens.json"), r#"{"<|extra_0|>": 600}"#).unwrap();
    let msg = err_text(Tokenizer::from_file(&d.join("vocab.json")));
    assert!(msg.contains("added_tokens.json"), "{msg}");
    assert!(msg.contains("\"<|extra_0|>\" has id 600"), "{msg}");
    assert!(msg.contains("gets 512"), "{msg}");

    fs::write(d.join("added_tokens.json"), r#"{"<|extra_0|>": "x"}"#).unwrap();
    let msg = err_text(Tokenizer::from_file(&d.join("vocab.json")));
    assert!(
        msg.contains("added_tokens.json") && msg.contains("<|extra_0|>"),
        "{msg}"
    );

    fs::write(d.join("added_tokens.json"), "{").unwrap();
    let msg = err_text(Tokenizer::from_file(&d.join("vocab.json")));
    assert!(msg.contains("added_tokens.json: not valid JSON"), "{msg}");
}

#[test]
fn damaged_merges_name_both_files() {
    let dir = copy("plain");
    let d = dir.path();
    fs::write(d.join("merges.txt"), "#version: 0.2\nĠ t\nnot-a-pair\n").unwrap();
    let msg = err_text(Tokenizer::from_file(&d.join("vocab.json")));
    assert!(
        msg.contains("merges.txt") && msg.contains("vocab.json"),
        "{msg}"
    );
    assert!(msg.contains("download both files again"), "{msg}");
}
