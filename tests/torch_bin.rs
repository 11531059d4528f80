//! PyTorch checkpoints (`pytorch_model.bin`) read without running them: the files under
//! tests/fixtures/torch_bin/ were written by torch.save (make_torch_bin.py says how).

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::DType;
use softtune::model::source::{self, HubOptions};
use softtune::model::weights::Weights;
use softtune::parity::check_fixture;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn offline() -> HubOptions {
    HubOptions {
        revision: None,
        offline: true,
        token: None,
    }
}

fn floats(w: &Weights, name: &str, shape: &[usize]) -> Vec<f32> {
    w.data(name, shape, DType::F32)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

/// The same views, in the zip archive and in PyTorch's legacy (pre-1.6) format.
#[test]
fn views_of_one_storage_read_as_pytorch_laid_them_out() {
    for file in ["views.bin", "legacy.bin"] {
        views_read_as_pytorch_laid_them_out(&fixtures().join("torch_bin").join(file));
    }
}

fn views_read_as_pytorch_laid_them_out(path: &Path) {
    let w = Weights::open(&[path.to_path_buf()]).unwrap();
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    assert_eq!(floats(&w, "x", &[3, 4]), x);
    assert_eq!(floats(&w, "p", &[3, 4]), x, "an nn.Parameter is its data");
    assert_eq!(floats(&w, "tail", &[2, 4]), x[4..], "a view at an offset");
    let transposed: Vec<f32> = (0..4)
        .flat_map(|c| (0..3).map(move |r| (r * 4 + c) as f32))
        .collect();
    assert_eq!(floats(&w, "t", &[4, 3]), transposed, "a strided view");
    assert_eq!(floats(&w, "bf16", &[3, 4]), x);
    assert_eq!(floats(&w, "f16", &[3, 4]), x);
    assert!(!w.contains("step"), "a plain int is not a tensor");
    let e = format!("{:#}", w.data("x", &[4, 3], DType::F32).unwrap_err());
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(file) && e.contains("[3, 4]"), "{e}");
}

#[test]
fn damaged_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A legacy file cut inside its pickles, inside its storages, or with a big-endian header.
    let legacy = std::fs::read(fixtures().join("torch_bin/legacy.bin")).unwrap();
    let cut = dir.path().join("pytorch_model.bin");
    for len in [40, legacy.len() - 3] {
        std::fs::write(&cut, &legacy[..len]).unwrap();
        let e = format!(
            "{:#}",
            Weights::open(std::slice::from_ref(&cut)).err().unwrap()
        );
        assert!(
            e.contains("pytorch_model.bin") && e.contains("truncated or corrupt"),
            "{e}"
        );
    }
    let big = String::from_utf8_lossy(&legacy).contains("little_endian");
    assert!(big, "the legacy fixture records its byte order");
    let at = legacy
        .windows(14)
        .position(|w| w == b"little_endianq")
        .expect("little_endian key");
    let mut flipped = legacy.clone();
    // The key's value follows its BINPUT (q, n): NEWTRUE (0x88) becomes NEWFALSE (0x89).
    assert_eq!(flipped[at + 15], 0x88);
    flipped[at + 15] = 0x89;
    std::fs::write(&cut, &flipped).unwrap();
    let e = format!(
        "{:#}",
        Weights::open(std::slice::from_ref(&cut)).err().unwrap()
    );
    assert!(e.contains("big-endian"), "{e}");

    let bytes = std::fs::read(fixtures().join("torch_bin/views.bin")).unwrap();
    let cut = dir.path().join("pytorch_model.bin");
    for (len, why) in [(bytes.len() - 40, "zip"), (10, "zip")] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let e = format!(
            "{:#}",
            Weights::open(std::slice::from_ref(&cut)).err().unwrap()
        );
        assert!(
            e.contains("pytorch_model.bin")
                && e.contains("truncated or corrupt")
                && e.contains(why),
            "{e}"
        );
    }
    std::fs::write(&cut, b"not a checkpoint").unwrap();
    let e = format!(
        "{:#}",
        Weights::open(std::slice::from_ref(&cut)).err().unwrap()
    );
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
}

/// The gpt2 fixture as transformers 4 saved `.bin` checkpoints (two shards and an index,
/// the head tied to the embedding's storage, the old causal-mask buffers) holds exactly the
/// safetensors fixture's tensors, and the model built from it meets the PyTorch references.
#[test]
fn sharded_bin_checkpoint_is_the_safetensors_model() {
    let bin = fixtures().join("torch_bin/gpt2");
    let files = source::resolve(bin.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(files.weights.len(), 2);
    assert!(
        files
            .index
            .unwrap()
            .ends_with("pytorch_model.bin.index.json")
    );
    same_model_as_the_safetensors_fixture(&bin, &files.weights);
    let w = Weights::open(&files.weights).unwrap();
    assert!(w.contains("transformer.h.0.attn.bias"), "buffers are read");
}

/// The gpt2 fixture as one pytorch_model.bin in PyTorch's legacy (pre-1.6) format.
#[test]
fn legacy_bin_checkpoint_is_the_safetensors_model() {
    let bin = fixtures().join("torch_bin/legacy_gpt2");
    let files = source::resolve(bin.to_str().unwrap(), &offline()).unwrap();
    assert_eq!(files.weights, vec![bin.join("pytorch_model.bin")]);
    same_model_as_the_safetensors_fixture(&bin, &files.weights);
}

fn same_model_as_the_safetensors_fixture(bin: &Path, weights: &[PathBuf]) {
    let from_bin = Weights::open(weights).unwrap();
    let plain = Weights::open(&[fixtures().join("gpt2/model.safetensors")]).unwrap();
    let mut names: Vec<&str> = plain.names().collect();
    names.sort();
    for name in &names {
        let shape = plain.shape(name).unwrap().to_vec();
        assert_eq!(
            floats(&from_bin, name, &shape),
            floats(&plain, name, &shape),
            "{name}"
        );
    }
    let wte = plain.shape("transformer.wte.weight").unwrap().to_vec();
    assert_eq!(
        floats(&from_bin, "lm_head.weight", &wte),
        floats(&plain, "transformer.wte.weight", &wte)
    );
    assert_eq!(from_bin.stored_dtype(), Some(DType::F32));

    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(bin).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        fixtures().join("gpt2/reference.safetensors"),
        dir.path().join("reference.safetensors"),
    )
    .unwrap();
    let checks =
        check_fixture::<Autodiff<Flex>>(dir.path(), &Default::default(), DType::F32).unwrap();
    assert_eq!(checks.len(), 6);
    for c in checks {
        assert!(c.pass(), "{}: error {:.3e}", c.what, c.err);
    }

    // `inspect` counts the same parameters (the tied head once, buffers not at all).
    let inspect = |dir: &Path| softtune::inspect::inspect(dir.to_str().unwrap(), &offline());
    let (a, b) = (
        inspect(bin).unwrap(),
        inspect(&fixtures().join("gpt2")).unwrap(),
    );
    assert_eq!(a.parameters, b.parameters);
    assert_eq!(a.weight_files, weights.len());
}

#[test]
fn a_missing_bin_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fixtures().join("torch_bin/gpt2");
    for f in [
        "config.json",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
    ] {
        std::fs::copy(bin.join(f), dir.path().join(f)).unwrap();
    }
    let e = format!(
        "{:#}",
        source::resolve(dir.path().to_str().unwrap(), &offline()).unwrap_err()
    );
    assert!(
        e.contains("pytorch_model-00002-of-00002.bin")
            && e.contains("pytorch_model.bin.index.json"),
        "{e}"
    );
}
