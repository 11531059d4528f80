//! Parity with PyTorch/transformers on every fixture model (tests/fixtures/README.md defines
//! each value): logits, logits with a soft prompt, both losses and the gradient of the
//! prompted loss with respect to the soft prompt, on the CPU backend in float32.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::DType;
use softtune::model::tokenizer::Tokenizer;
use softtune::parity::{Reference, check_fixture, check_generation, tolerance};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn parity(name: &str) {
    let errors =
        check_fixture::<Autodiff<Flex>>(&fixture(name), &Default::default(), DType::F32).unwrap();
    assert_eq!(errors.len(), 6);
    for c in errors {
        assert_eq!(c.bound, tolerance(DType::F32));
        assert!(
            c.pass(),
            "{name}: {} max relative error {:.3e} exceeds {:e}",
            c.what,
            c.err,
            c.bound
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
    qwen3,
    gemma,
    gemma3,
    cohere,
    phi3,
    phi3_long,
    gemma2,
    xglm,
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

/// A fixture model in float32 on `flex`, its reference tensors and its soft prompt.
fn load_fixture(
    name: &str,
) -> (
    softtune::model::CausalLm<Flex>,
    Reference,
    burn::tensor::Tensor<Flex, 2>,
) {
    use burn::tensor::{Tensor, TensorData};
    use softtune::model::weights::Weights;
    use softtune::model::{CausalLm, LoadOptions, ModelConfig};

    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::open(&[dir.join("model.safetensors")]).unwrap();
    let dev = Default::default();
    let model =
        CausalLm::<Flex>::load(&cfg, &weights, &dev, LoadOptions { dtype: DType::F32 }).unwrap();
    let r = Reference::read(&dir.join("reference.safetensors")).unwrap();
    let (pshape, pdata) = r.get("soft_prompt").unwrap().clone();
    let prompt = Tensor::<Flex, 2>::from_data(TensorData::new(pdata, [pshape[0], pshape[1]]), &dev);
    (model, r, prompt)
}

/// The sample generator's greedy pick is PyTorch's most likely next token, with and without
/// the soft prompt (checked where the best two logits are not a near tie).
#[test]
fn greedy_generation_follows_the_reference_logits() {
    use softtune::model::generate::{Sampling, generate};

    let greedy = Sampling::greedy(1);
    let mut checked = 0;
    for name in [
        "gpt2", "llama", "opt_proj", "gpt_neox", "qwen2", "gemma2", "xglm",
    ] {
        let (model, r, prompt) = load_fixture(name);
        let t = r.ids_shape[1];
        let row: Vec<u32> = r.ids[..t].iter().map(|&x| x as u32).collect();
        for (key, p, pos) in [
            ("logits", None, t - 1),
            (
                "logits_with_prompt",
                Some(&prompt),
                prompt.dims()[0] + t - 1,
            ),
        ] {
            let (shape, logits) = r.get(key).unwrap();
            let v = shape[2];
            let last = &logits[pos * v..(pos + 1) * v];
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
            if last[order[0]] - last[order[1]] < 1e-3 {
                continue;
            }
            let got = generate(&model, p, &row, v, 1 << 20, &[], &greedy, |_| Ok(())).unwrap();
            assert_eq!(got, vec![order[0] as u32], "{name} {key}");
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "only {checked} cases were clear enough to check"
    );
}

/// Greedy continuations of several tokens, with the fixture's soft prompt and without it,
/// equal transformers' (`tests/fixtures/generation.json`, made by `make_generation.py`):
/// a short text, and one long enough that the window slides past the model's context.
#[test]
fn greedy_continuations_match_transformers() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("generation.json")).unwrap())
            .unwrap();
    for case in reference["cases"].as_array().unwrap() {
        // Rounding must not be able to flip a greedy pick.
        assert!(case["min_margin"].as_f64().unwrap() > 1e-3, "{case}");
        assert!(
            case["penalised"]["min_margin"].as_f64().unwrap() > 1e-3,
            "{case}"
        );
    }
    // Ten cases, with and without the prompt, greedy and with the repetition penalty.
    let cases = check_generation::<Flex>(&fixture(""), &Default::default(), DType::F32).unwrap();
    assert_eq!(cases.len(), 40);
    assert_eq!(
        cases
            .iter()
            .filter(|c| c.what.ends_with("penalised"))
            .count(),
        20
    );
    for c in cases {
        assert!(
            c.pass,
            "{}: {} of {} tokens match",
            c.what, c.matching, c.want
        );
        // Penalised, GPT-J's tiny model reaches its end-of-text token after 7 tokens.
        let least = if c.what.ends_with("penalised") { 7 } else { 15 };
        assert!(c.want >= least, "{}: {} tokens", c.what, c.want);
    }
}

/// Continuations written together (`generate_rows`, as `softtune generate --samples` does)
/// are those each writes alone: sampled with their own seeds and settings, some ending at a
/// stop token or their length before the others (leaving the batch), with the window
/// sliding under them, with and without the prompt, for a plain, a GQA and a parallel
/// (GPT-J) model.
#[test]
fn rows_write_what_each_writes_alone() {
    use softtune::model::generate::{Sampling, generate, generate_rows};

    let mut ended_early = 0;
    for name in ["gpt2", "mistral", "gptj"] {
        let (model, r, prompt) = load_fixture(name);
        let context: Vec<u32> = r.ids[..6].iter().map(|&x| x as u32).collect();
        let vocab = model.embed_rows();
        let sampled = |seed: u64, max_new: usize| Sampling {
            max_new,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_range: 0,
            seed,
        };
        let rows = vec![
            sampled(1, 14),
            Sampling {
                top_k: 5,
                repetition_penalty: 1.3,
                ..sampled(2, 14)
            },
            sampled(3, 4),
            Sampling::greedy(14),
            sampled(4, 0),
            sampled(5, 14),
        ];
        // A stop token: the third token row 0 draws alone.
        let free = generate(
            &model,
            None,
            &context,
            vocab,
            1 << 20,
            &[],
            &rows[0],
            |_| Ok(()),
        );
        let stop = [free.unwrap()[2]];
        for p in [Some(&prompt), None] {
            let n = p.map_or(0, |p| p.dims()[0]);
            // The whole context, and one that slides after 5 new tokens.
            for context_len in [1 << 20, n + context.len() + 5] {
                let mut seen = vec![Vec::new(); rows.len()];
                let together = generate_rows(
                    &model,
                    p,
                    &context,
                    vocab,
                    context_len,
                    &stop,
                    &rows,
                    |r, id| {
                        seen[r].push(id);
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(seen, together, "{name}: `each` sees every token");
                for (i, s) in rows.iter().enumerate() {
                    let alone =
                        generate(
                            &model,
                            p,
                            &context,
                            vocab,
                            context_len,
                            &stop,
                            s,
                            |_| Ok(()),
                        )
                        .unwrap();
                    let what = format!("{name} row {i} prompt {} window {context_len}", n > 0);
                    assert_eq!(together[i], alone, "{what}");
                    assert!(alone.len() <= s.max_new, "{what}");
                    if alone.len() < s.max_new {
                        ended_early += 1;
                    }
                }
            }
        }
    }
    // Row 0 alone (no prompt) always meets the stop token; others may.
    assert!(
        ended_early >= 6,
        "{ended_early} rows ended at the stop token"
    );
}

/// The 16-bit paths the GPU runs (weights and activations in bf16 or f16; norms, attention
/// scores, softmax and loss in f32), checked on the CPU against the float32 references with
/// the per-dtype bounds `softtune parity` uses on a GPU.
#[test]
fn sixteen_bit_weights_stay_within_their_bounds() {
    for dtype in [DType::BF16, DType::F16] {
        for name in [
            "gpt2",
            "gpt_neo",
            "gpt_neox",
            "gptj",
            "llama",
            "opt_proj_postln",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3",
            "cohere",
            "phi3_long",
            "xglm",
        ] {
            let errors =
                check_fixture::<Autodiff<Flex>>(&fixture(name), &Default::default(), dtype)
                    .unwrap();
            for c in errors {
                let (what, e) = (c.what, c.err);
                assert!(
                    c.pass(),
                    "{name} {dtype:?}: {what} max relative error {e:.3e} exceeds {:e}",
                    c.bound
                );
                if what == "logits" {
                    assert!(
                        e > 1e-4,
                        "{name} {dtype:?}: logits error {e:.1e} is too small for 16-bit weights: were they used?"
                    );
                }
            }
        }
    }
}

/// The comparisons `softtune parity` runs first on a GPU (every `Kernels` fast path against
/// plain Burn, forward and gradients), here on the CPU: the memory-saving attention and
/// cross-entropy and the matmul's own backward in every layout the models use.
#[test]
fn kernel_fast_paths_match_plain_burn() {
    for dtype in [DType::F32, DType::BF16] {
        let checks =
            softtune::parity::kernel_checks::<Autodiff<Flex>>(&Default::default(), dtype).unwrap();
        assert_eq!(checks.len(), 48, "{checks:?}");
        for (what, e) in checks {
            assert!(
                e <= tolerance(dtype),
                "{dtype:?}: {what} max relative error {e:.3e} exceeds {:e}",
                tolerance(dtype)
            );
        }
    }
}

/// A multimodal Gemma 3 checkpoint (`gemma3`: the text model's settings under
/// `text_config`, its tensors under `language_model.model.` as transformers 4 saved them or
/// `model.language_model.` as 5 does, beside a vision tower) loads as its text model: the
/// gemma3 fixture rewritten so matches the same references.
#[test]
fn multimodal_gemma3_checkpoints_load_their_text_model() {
    use safetensors::tensor::TensorView;
    let src = fixture("gemma3");
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let vision = [0f32; 4]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>();
    for prefix in ["language_model.model.", "model.language_model."] {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "model_type": "gemma3",
            "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": text,
            "vision_config": {"model_type": "siglip_vision_model"},
            "torch_dtype": "float32",
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let mut renamed: Vec<(String, TensorView)> = tensors
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let name = name
                    .strip_prefix("model.")
                    .map_or(name.clone(), |rest| format!("{prefix}{rest}"));
                (name, view)
            })
            .collect();
        assert!(renamed.iter().all(|(n, _)| n.starts_with(prefix)));
        let tower = TensorView::new(safetensors::Dtype::F32, vec![4], &vision).unwrap();
        renamed.push(("vision_tower.patch.weight".to_string(), tower));
        safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors"))
            .unwrap();
        std::fs::copy(
            src.join("reference.safetensors"),
            dir.path().join("reference.safetensors"),
        )
        .unwrap();
        let errors =
            check_fixture::<Autodiff<Flex>>(dir.path(), &Default::default(), DType::F32).unwrap();
        assert_eq!(errors.len(), 6);
        for c in errors {
            assert!(c.pass(), "{prefix}: {} error {:.3e}", c.what, c.err);
        }
        // `inspect` finds the nested embedding and leaves the vision tower out of the count.
        let hub = softtune::model::source::HubOptions {
            offline: true,
            ..softtune::model::source::HubOptions::from_env()
        };
        let inspect = |dir: &Path| softtune::inspect::inspect(dir.to_str().unwrap(), &hub).unwrap();
        let (nested, plain) = (inspect(dir.path()), inspect(&src));
        assert_eq!(nested.parameters, plain.parameters, "{prefix}");
        assert_eq!(nested.model_type, "gemma3_text");
    }
}
