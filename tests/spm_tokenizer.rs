//! The tokenizer built from a sentencepiece `tokenizer.model` (no `tokenizer.json`) gives
//! transformers' token ids (`tests/fixtures/spm_tokenizer/`, made by
//! `tests/fixtures/make_spm_tokenizer.py`), and bad files are clear errors.

mod common;

use std::fs;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use softtune::model::tokenizer::Tokenizer;

use common::{
    assert_matches_transformers, copy_folder, err_text, fixtures, model_folder, resolve_offline,
};

/// Every fixture folder: Llama's tokenizer class (four settings) and the model's own
/// sentencepiece settings (BPE and Unigram).
const FOLDERS: [&str; 6] = ["llama", "legacy", "noprefix", "declared", "bare", "unigram"];

fn spm(name: &str) -> PathBuf {
    fixtures().join("spm_tokenizer").join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(spm("expected.json")).unwrap()).unwrap()
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::from_file(&spm(name).join("tokenizer.model")).unwrap()
}

/// A writable copy of a fixture folder.
fn copy(name: &str) -> tempfile::TempDir {
    copy_folder(&spm(name))
}

#[test]
fn ids_match_transformers() {
    let want = expected();
    for name in FOLDERS {
        assert_matches_transformers(&load(name), &want, name);
    }
}

/// On the whole corpus (about 250 KB) the ids equal transformers' (their count and SHA-256),
/// and Llama's tokenizer decodes them back to the text.
#[test]
fn corpus_ids_match_transformers() {
    let want = expected();
    let text = fs::read_to_string(fixtures().join("tokenizer_corpus.txt")).unwrap();
    for name in FOLDERS {
        let got = load(name).encode(&text).unwrap();
        assert_eq!(
            got.len() as u64,
            want[name]["corpus"]["tokens"].as_u64().unwrap(),
            "{name}"
        );
        let bytes: Vec<u8> = got.iter().flat_map(|i| i.to_le_bytes()).collect();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            want[name]["corpus"]["sha256"].as_str().unwrap(),
            "{name}"
        );
        if name == "llama" {
            assert_eq!(load(name).decode(&got).unwrap(), text);
        }
    }
}

#[test]
fn a_folder_with_only_tokenizer_model_resolves_to_it() {
    let dir = model_folder(&spm("llama"), "llama");
    let d = dir.path();
    let files = resolve_offline(d);
    assert_eq!(files.tokenizer, Some(d.join("tokenizer.model")));
    // tokenizer.json wins when both exist.
    fs::copy(spm("converted/tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let files = resolve_offline(d);
    assert_eq!(files.tokenizer, Some(d.join("tokenizer.json")));
    // Without any tokenizer file the error names all three kinds.
    fs::remove_file(d.join("tokenizer.json")).unwrap();
    fs::remove_file(d.join("tokenizer.model")).unwrap();
    let files = resolve_offline(d);
    let msg = err_text(files.tokenizer_path());
    assert!(
        msg.contains("no tokenizer.json, no vocab.json with merges.txt")
            && msg.contains("no sentencepiece tokenizer.model"),
        "{msg}"
    );
}

#[test]
fn the_converted_tokenizer_json_gives_the_same_ids() {
    let text = fs::read_to_string(fixtures().join("tokenizer_corpus.txt")).unwrap();
    let converted = Tokenizer::from_file(&spm("converted/tokenizer.json")).unwrap();
    assert_eq!(
        load("llama").encode(&text).unwrap(),
        converted.encode(&text).unwrap()
    );
}

/// The error of building `folder`'s tokenizer with `config` as its tokenizer_config.json.
fn refusal(folder: &str, config: &str) -> String {
    let dir = copy(folder);
    fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    err_text(Tokenizer::from_file(&dir.path().join("tokenizer.model")))
}

#[test]
fn another_tokenizer_class_is_refused_with_the_conversion() {
    let msg = refusal("llama", r#"{"tokenizer_class": "T5Tokenizer"}"#);
    assert!(msg.contains("tokenizer_config.json"), "{msg}");
    assert!(msg.contains("T5Tokenizer"), "{msg}");
    assert!(msg.contains("AutoTokenizer.from_pretrained"), "{msg}");

    // Llama's tokenizer over a Unigram model: the files do not belong together.
    let msg = refusal("unigram", r#"{"tokenizer_class": "LlamaTokenizer"}"#);
    assert!(
        msg.contains("Unigram") && msg.contains("tokenizer.model"),
        "{msg}"
    );
}

#[test]
fn damaged_files_are_named() {
    let dir = copy("llama");
    let d = dir.path();
    let model = d.join("tokenizer.model");
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_text(Tokenizer::from_file(&model));
    assert!(msg.contains("tokenizer.model"), "{msg}");
    assert!(msg.contains("download it again"), "{msg}");

    fs::write(&model, b"").unwrap();
    let msg = err_text(Tokenizer::from_file(&model));
    assert!(msg.contains("without pieces"), "{msg}");

    fs::write(&model, &bytes).unwrap();
    fs::write(
        d.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "LlamaTokenizer", "legacy": "yes"}"#,
    )
    .unwrap();
    let msg = err_text(Tokenizer::from_file(&model));
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("legacy"),
        "{msg}"
    );

    // A declared added-token id the token does not get.
    fs::write(
        d.join("tokenizer_config.json"),
        r#"{"tokenizer_class": "LlamaTokenizer", "added_tokens_decoder": {"600": {"content": "[PAD]", "special": true}}}"#,
    )
    .unwrap();
    let msg = err_text(Tokenizer::from_file(&model));
    assert!(
        msg.contains("\"[PAD]\" has id 600") && msg.contains("gets 512"),
        "{msg}"
    );
}
