//! Parity with PyTorch/transformers on every fixture model (tests/fixtures/README.md defines
//! each value): logits, logits with a soft prompt, both losses and the gradient of the
//! prompted loss with respect to the soft prompt, on the CPU backend in float32.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::DType;
use softtune::model::tokenizer::Tokenizer;
use softtune::parity::{Reference, check_fixture, tolerance};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn parity(name: &str) {
    let errors =
        check_fixture::<Autodiff<Flex>>(&fixture(name), &Default::default(), DType::F32).unwrap();
    assert_eq!(errors.len(), 5);
    for (what, e) in errors {
        assert!(
            e <= tolerance(DType::F32),
            "{name}: {what} max relative error {e:.3e} exceeds {:e}",
            tolerance(DType::F32)
        );
    }
}

macro_rules! parity_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { parity(stringify!($name)); } )*
    };
}

parity_tests!(
    gpt2,
    gptj,
    gptj_rot8,
    gpt_neox,
    gpt_neo,
    opt,
    opt_proj,
    opt_proj_postln,
    llama,
    mistral,
    qwen2,
);

#[test]
fn tokenizer_matches_python() {
    for name in ["gpt2", "llama", "opt"] {
        let dir = fixture(name);
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let r = Reference::read(&dir.join("reference.safetensors")).unwrap();
        let t = r.ids_shape[1];
        for (row, sentence) in meta["sentences"].as_array().unwrap().iter().enumerate() {
            let ids = tok.encode(sentence.as_str().unwrap()).unwrap();
            let want: Vec<u32> = r.ids[row * t..(row + 1) * t]
                .iter()
                .map(|&x| x as u32)
                .collect();
            assert_eq!(&ids[..t], &want[..], "{name}: row {row}");
        }
        assert_eq!(tok.id_bound(), 512);
    }
}
