//! Helpers shared by the integration tests (each test crate uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A dataset of the first `bytes` of the fixture corpus, split over two files in `dir/data/`.
pub fn dataset(dir: &Path, bytes: usize) -> PathBuf {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_corpus.txt")).unwrap();
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let d = dir.join("data");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a.txt"), &text[..end / 2]).unwrap();
    std::fs::write(d.join("b.txt"), &text[end / 2..end]).unwrap();
    d
}

/// `text` hard-wrapped at `width` columns, as a plain-text book is: each line broken
/// greedily (words go on a line while they fit); blank lines stay.
pub fn hard_wrap(text: &str, width: usize) -> String {
    let mut out = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                out.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push(line);
    }
    out.join("\n")
}

/// A writable copy of the files of the folder `src` (not its subfolders).
pub fn copy_folder(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// The whole error chain of `r`, which must be an error.
pub fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// A model folder for resolving (not loading): the files of the tokenizer fixture folder
/// `tokenizer`, the `config.json` of the fixture model `model`, and a stand-in weights file.
pub fn model_folder(tokenizer: &Path, model: &str) -> tempfile::TempDir {
    let dir = copy_folder(tokenizer);
    let d = dir.path();
    std::fs::copy(
        fixtures().join(model).join("config.json"),
        d.join("config.json"),
    )
    .unwrap();
    std::fs::write(d.join("model.safetensors"), b"x").unwrap();
    dir
}

/// The model files of the local folder `dir`, offline.
pub fn resolve_offline(dir: &Path) -> softtune::model::source::ModelFiles {
    let opts = softtune::model::source::HubOptions {
        offline: true,
        ..Default::default()
    };
    softtune::model::source::resolve(dir.to_str().unwrap(), &opts).unwrap()
}

/// The ids in a JSON array.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// `tok` gives what transformers gave for the tokenizer fixture `name` (an `expected.json` of
/// the tokenizer fixtures): the ids of every sample text (and its decoded text, where
/// recorded), `len(tokenizer)` and the special ids.
pub fn assert_matches_transformers(
    tok: &softtune::model::tokenizer::Tokenizer,
    expected: &serde_json::Value,
    name: &str,
) {
    let want = &expected[name];
    for (i, text) in expected["texts"].as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, json_ids(&want["ids"][i]), "{name}: {text:?}");
        if let Some(decoded) = want["decoded"][i].as_str() {
            assert_eq!(
                tok.decode(&got).unwrap(),
                decoded,
                "{name}: decoding {text:?}"
            );
        }
    }
    assert_eq!(
        tok.id_bound() as u64,
        want["vocab_size"].as_u64().unwrap(),
        "{name}"
    );
    let mut special: Vec<u32> = tok.special_ids().into_iter().collect();
    special.sort();
    assert_eq!(special, json_ids(&want["special"]), "{name}");
}
