//! Tokenization throughput of the dataset pipeline (parallel, paragraph-split), as used by
//! `softtune train`:
//!
//!     cargo run --release --example tokenize_bench -- TOKENIZER_FILE [MEGABYTES]
//!
//! TOKENIZER_FILE: a tokenizer.json, GPT-2's vocab.json or a sentencepiece tokenizer.model.
//!
//! Builds a text of MEGABYTES (default 10) by repeating the bundled demo dataset, then
//! tokenizes it once whole-file-at-a-time on one thread and once through the pipeline.

use std::time::Instant;

use softtune::data::dataset::{DataFile, tokenize_files};
use softtune::model::tokenizer::Tokenizer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tok_path = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "tests/fixtures/gpt2/tokenizer.json".into());
    let mb: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let tok = Tokenizer::from_file(&tok_path)?;
    let mut demo = String::new();
    for f in ["genesis", "exodus", "ruth", "ecclesiastes"] {
        demo += &std::fs::read_to_string(format!("demo/kjv/{f}.txt"))?;
        demo += "\n\n";
    }
    let mut text = String::new();
    while text.len() < mb * 1_000_000 {
        text += &demo;
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.txt");
    std::fs::write(&path, &text)?;
    let file = DataFile {
        path,
        size: text.len() as u64,
        mtime: 0,
    };

    let t = Instant::now();
    let single = tok.encode(&text)?;
    let one = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut piped = tokenize_files(&tok, &[file], 0, false)?.0;
    let par = t.elapsed().as_secs_f64();
    piped.pop(); // the EOS after the file
    println!(
        "{:.1} MB, {} tokens: one encode call {one:.2} s, pipeline {par:.2} s ({:.1} MB/s), identical ids: {}",
        text.len() as f64 / 1e6,
        single.len(),
        text.len() as f64 / 1e6 / par,
        single == piped
    );
    Ok(())
}
