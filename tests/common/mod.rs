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
