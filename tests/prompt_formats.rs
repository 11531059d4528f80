//! Soft-prompt files: what our exporters write is checked with readers written here, independent
//! of `softtune::prompt` (npy and safetensors headers parsed by hand, zip members listed with the
//! zip crate), then read back through `prompt::load`. Also: the files `prompt::load` must refuse.

use std::collections::BTreeSet;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use softtune::export::{KoboldMeta, PeftMeta, write_atomic, write_kobold_zip, write_peft_adapter};
use softtune::prompt::{self, PromptFormat, SoftPrompt};

// ------------------------------------------------------------------------------------------
// helpers

fn sample(rows: usize, dim: usize) -> SoftPrompt {
    let data = (0..rows * dim)
        .map(|i| ((i as f32) * 0.37).sin() * 1.5 + (i % 7) as f32 * 0.01)
        .collect();
    SoftPrompt::new(rows, dim, data).unwrap()
}

fn meta() -> KoboldMeta {
    KoboldMeta {
        name: "Test prompt".into(),
        author: "someone".into(),
        supported: vec![
            "KoboldAI/OPT-6B-nerys-v2".into(),
            "facebook/opt-350m".into(),
        ],
        description: "a description".into(),
    }
}

fn peft_meta() -> PeftMeta {
    PeftMeta {
        base_model_name_or_path: "facebook/opt-350m".into(),
        num_attention_heads: 16,
        num_layers: 24,
        prompt_tuning_init: "TEXT".into(),
        prompt_tuning_init_text: Some("Once upon a time".into()),
        tokenizer_name_or_path: None,
    }
}

/// Names in a folder, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Member names of a zip archive, in archive order.
fn zip_members(bytes: &[u8]) -> Vec<String> {
    let archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    archive.file_names().map(str::to_owned).collect()
}

fn zip_member(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let mut f = archive.by_name(name).unwrap();
    let mut out = Vec::new();
    f.read_to_end(&mut out).unwrap();
    out
}

/// A zip archive built from `(name, bytes)` pairs.
fn make_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in members {
        zw.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zw.write_all(bytes).unwrap();
    }
    zw.finish().unwrap().into_inner()
}

/// What the independent npy reader found.
#[derive(Debug)]
struct Npy {
    major: u8,
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
    data_start: usize,
}

/// Parses an npy header by hand: magic, version, little-endian header length, then a dict
/// literal of which we pick 'descr', 'fortran_order' and 'shape' by string search.
fn parse_npy(bytes: &[u8]) -> Npy {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "npy magic");
    let major = bytes[6];
    let (len, text_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => panic!("npy version {v}"),
    };
    let text = std::str::from_utf8(&bytes[text_start..text_start + len]).unwrap();
    assert!(text.ends_with('\n'), "npy header ends with a newline");
    let text = text.trim_end();
    assert!(text.starts_with('{') && text.ends_with('}'), "{text}");

    let after = |key: &str| -> &str {
        let k = format!("'{key}':");
        let at = text
            .find(&k)
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        text[at + k.len()..].trim_start()
    };
    let d = after("descr");
    assert!(d.starts_with('\''));
    let descr = d[1..1 + d[1..].find('\'').unwrap()].to_owned();
    let f = after("fortran_order");
    let fortran = if f.starts_with("False") {
        false
    } else if f.starts_with("True") {
        true
    } else {
        panic!("fortran_order in {text}")
    };
    let s = after("shape");
    assert!(s.starts_with('('));
    let inner = &s[1..s.find(')').unwrap()];
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap())
        .collect();
    Npy {
        major,
        descr,
        fortran,
        shape,
        data_start: text_start + len,
    }
}

/// An npy file assembled by hand (format 1.0), for the inputs our writer never produces.
fn npy_by_hand(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn f32_payload(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// An npy file written with the npyz crate (not our writer).
fn npy_with_npyz(shape: &[u64], values: &[f32]) -> Vec<u8> {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    {
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.extend(values.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    buf
}

/// Parses a safetensors file by hand: 8-byte little-endian header length, JSON header.
fn parse_safetensors(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, 8 + n)
}

fn err_text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

fn assert_pickle_refusal(path: &Path) {
    let e = err_text(prompt::load(path).expect_err("pickle-based file must be refused"));
    assert!(e.contains("pickle"), "{e}");
    assert!(e.contains("arbitrary code"), "{e}");
    assert!(
        e.contains("KoboldAI") && e.contains("PEFT"),
        "lists accepted formats: {e}"
    );
    assert!(
        e.contains(&path.display().to_string()),
        "names the file: {e}"
    );
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn soft_prompt_new_checks_shape_and_values() {
    assert!(SoftPrompt::new(2, 2, vec![0.0; 3]).is_err());
    assert!(SoftPrompt::new(0, 2, vec![]).is_err());
    assert!(SoftPrompt::new(2, 0, vec![]).is_err());
    assert!(SoftPrompt::new(usize::MAX, 2, vec![]).is_err());
    let e = err_text(SoftPrompt::new(1, 2, vec![0.0, f32::NAN]).unwrap_err());
    assert!(e.contains("row 0, column 1"), "{e}");
    assert!(SoftPrompt::new(1, 2, vec![0.0, f32::NEG_INFINITY]).is_err());
    let p = SoftPrompt::new(1, 2, vec![0.0, 1.0]).unwrap();
    assert_eq!((p.rows, p.dim, p.data), (1, 2, vec![0.0, 1.0]));
}

// ------------------------------------------------------------------------------------------
// KoboldAI zip

#[test]
fn kobold_zip_f32_layout_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nerys.zip");
    let p = sample(3, 5);
    write_kobold_zip(&path, &p, &meta(), false).unwrap();

    assert_eq!(
        entries(dir.path()),
        vec!["nerys.zip"],
        "no temporary files left"
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(zip_members(&bytes), vec!["tensor.npy", "meta.json"]);

    let npy = zip_member(&bytes, "tensor.npy");
    let h = parse_npy(&npy);
    assert_eq!(h.major, 1);
    assert_eq!(h.descr, "<f4");
    assert!(!h.fortran);
    assert_eq!(h.shape, vec![3, 5]);
    assert_eq!(h.data_start % 64, 0, "data aligned as numpy writes it");
    let payload = &npy[h.data_start..];
    assert_eq!(payload.len(), 3 * 5 * 4);
    let values: Vec<f32> = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values, p.data);

    let meta_json: serde_json::Value =
        serde_json::from_slice(&zip_member(&bytes, "meta.json")).unwrap();
    let obj = meta_json.as_object().unwrap();
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["name", "author", "supported", "description"])
    );
    assert_eq!(obj["name"], "Test prompt");
    assert_eq!(obj["author"], "someone");
    assert_eq!(
        obj["supported"],
        serde_json::json!(["KoboldAI/OPT-6B-nerys-v2", "facebook/opt-350m"])
    );
    assert_eq!(obj["description"], "a description");

    let (back, format) = prompt::load(&path).unwrap();
    assert_eq!(format, PromptFormat::KoboldZip);
    assert_eq!(back, p);
    assert_eq!(prompt::load_for_width(&path, 5).unwrap(), p);
}

#[test]
fn kobold_meta_author_omitted_description_cut_name_defaulted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my prompt.zip");
    let long: String = "é".repeat(300) + &"x".repeat(300);
    let m = KoboldMeta {
        name: String::new(),
        author: String::new(),
        supported: vec![],
        description: long,
    };
    write_kobold_zip(&path, &sample(2, 4), &m, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&zip_member(&bytes, "meta.json")).unwrap();
    let obj = v.as_object().unwrap();
    assert!(!obj.contains_key("author"), "empty author omitted: {v}");
    assert_eq!(obj["name"], "my prompt", "a name is always present");
    assert_eq!(obj["supported"], serde_json::json!([]));
    let d = obj["description"].as_str().unwrap();
    assert_eq!(d.chars().count(), 500);
    assert_eq!(d, "é".repeat(300) + &"x".repeat(200));
}

#[test]
fn kobold_zip_f16() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.zip");
    let p = sample(4, 6);
    write_kobold_zip(&path, &p, &meta(), true).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(zip_members(&bytes), vec!["tensor.npy", "meta.json"]);
    let npy = zip_member(&bytes, "tensor.npy");
    let h = parse_npy(&npy);
    assert_eq!(h.descr, "<f2");
    assert_eq!(h.shape, vec![4, 6]);
    let payload = &npy[h.data_start..];
    assert_eq!(payload.len(), 4 * 6 * 2);
    let expected: Vec<f32> = p
        .data
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let got: Vec<f32> = payload
        .chunks_exact(2)
        .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
        .collect();
    assert_eq!(got, expected);
    for (a, b) in got.iter().zip(&p.data) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0));
    }
    let (back, format) = prompt::load(&path).unwrap();
    assert_eq!(format, PromptFormat::KoboldZip);
    assert_eq!(back.data, expected);
    assert_eq!((back.rows, back.dim), (4, 6));
}

#[test]
fn kobold_f16_overflow_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.zip");
    let p = SoftPrompt::new(1, 2, vec![1.0, 1.0e6]).unwrap();
    let e = err_text(write_kobold_zip(&path, &p, &meta(), true).unwrap_err());
    assert!(e.contains("float16") && e.contains("float32"), "{e}");
    assert!(!path.exists());
    assert!(entries(dir.path()).is_empty(), "no temporary files left");
    // float32 is fine.
    write_kobold_zip(&path, &p, &meta(), false).unwrap();
}

#[test]
fn kobold_refuses_too_many_rows_and_bad_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.zip");
    let e = err_text(write_kobold_zip(&path, &sample(2048, 2), &meta(), false).unwrap_err());
    assert!(e.contains("2048"), "{e}");
    let bad = SoftPrompt {
        rows: 2,
        dim: 2,
        data: vec![0.0, 1.0, f32::NAN, 0.0],
    };
    assert!(write_kobold_zip(&path, &bad, &meta(), false).is_err());
    let short = SoftPrompt {
        rows: 2,
        dim: 2,
        data: vec![0.0; 3],
    };
    assert!(write_kobold_zip(&path, &short, &meta(), false).is_err());
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn rewriting_a_zip_replaces_it_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.zip");
    write_kobold_zip(&path, &sample(2, 3), &meta(), false).unwrap();
    let p2 = sample(5, 3);
    write_kobold_zip(&path, &p2, &meta(), false).unwrap();
    assert_eq!(prompt::load(&path).unwrap().0, p2);
    assert_eq!(entries(dir.path()), vec!["p.zip"]);
}

#[test]
fn write_atomic_writes_and_creates_parents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("f.bin");
    write_atomic(&path, b"hello").unwrap();
    write_atomic(&path, b"world!").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"world!");
    assert_eq!(entries(&dir.path().join("sub")), vec!["f.bin"]);
    // A folder is not overwritten.
    assert!(write_atomic(dir.path(), b"x").is_err());
}

// ------------------------------------------------------------------------------------------
// PEFT adapter

const PEFT_KEYS: [&str; 17] = [
    "auto_mapping",
    "base_model_name_or_path",
    "inference_mode",
    "modules_to_save",
    "num_attention_heads",
    "num_layers",
    "num_transformer_submodules",
    "num_virtual_tokens",
    "peft_type",
    "peft_version",
    "prompt_tuning_init",
    "prompt_tuning_init_text",
    "revision",
    "task_type",
    "token_dim",
    "tokenizer_kwargs",
    "tokenizer_name_or_path",
];

#[test]
fn peft_adapter_layout_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let p = sample(8, 12);
    write_peft_adapter(&out, &p, &peft_meta()).unwrap();

    assert_eq!(
        entries(dir.path()),
        vec!["adapter"],
        "no temporary folders left"
    );
    assert_eq!(
        entries(&out),
        vec!["adapter_config.json", "adapter_model.safetensors"]
    );

    // safetensors, parsed by hand
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (header, data_start) = parse_safetensors(&bytes);
    let obj = header.as_object().unwrap();
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["__metadata__", "prompt_embeddings"]));
    assert_eq!(obj["__metadata__"], serde_json::json!({"format": "pt"}));
    let t = &obj["prompt_embeddings"];
    assert_eq!(t["dtype"], "F32");
    assert_eq!(t["shape"], serde_json::json!([8, 12]));
    let offs: Vec<usize> = t["data_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(offs[1] - offs[0], 8 * 12 * 4);
    assert_eq!(bytes.len(), data_start + offs[1]);
    let values: Vec<f32> = bytes[data_start + offs[0]..data_start + offs[1]]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values, p.data);
    // The crate's own reader agrees.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("prompt_embeddings").unwrap().shape(), &[8, 12]);

    // adapter_config.json
    let text = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg = cfg.as_object().unwrap();
    let keys: Vec<&str> = cfg.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = PEFT_KEYS.to_vec();
    expected.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, expected);
    // sorted keys, indent 2, as PEFT writes it
    let positions: Vec<usize> = PEFT_KEYS
        .iter()
        .map(|k| text.find(&format!("\n  \"{k}\": ")).expect(k))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "keys sorted: {text}"
    );
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["num_virtual_tokens"], 8);
    assert_eq!(cfg["token_dim"], 12);
    assert_eq!(cfg["num_transformer_submodules"], 1);
    assert_eq!(cfg["num_attention_heads"], 16);
    assert_eq!(cfg["num_layers"], 24);
    assert_eq!(cfg["base_model_name_or_path"], "facebook/opt-350m");
    assert_eq!(cfg["revision"], serde_json::Value::Null);
    assert_eq!(cfg["inference_mode"], true);
    assert_eq!(cfg["prompt_tuning_init"], "TEXT");
    assert_eq!(cfg["prompt_tuning_init_text"], "Once upon a time");
    assert_eq!(
        cfg["tokenizer_name_or_path"], "facebook/opt-350m",
        "TEXT init needs a tokenizer: defaults to the base model"
    );
    assert_eq!(cfg["tokenizer_kwargs"], serde_json::Value::Null);
    assert_eq!(cfg["modules_to_save"], serde_json::Value::Null);
    assert_eq!(cfg["auto_mapping"], serde_json::Value::Null);
    assert!(cfg["peft_version"].is_string());

    let (back, format) = prompt::load(&out).unwrap();
    assert_eq!(format, PromptFormat::PeftAdapter);
    assert_eq!(back, p);
    let (back2, _) = prompt::load(&out.join("adapter_model.safetensors")).unwrap();
    assert_eq!(back2, p);
}

#[test]
fn peft_random_init_writes_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let m = PeftMeta {
        prompt_tuning_init: "RANDOM".into(),
        prompt_tuning_init_text: None,
        tokenizer_name_or_path: None,
        ..peft_meta()
    };
    write_peft_adapter(&out, &sample(2, 3), &m).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["prompt_tuning_init"], "RANDOM");
    assert!(cfg["prompt_tuning_init_text"].is_null());
    assert!(cfg["tokenizer_name_or_path"].is_null());

    let bad = PeftMeta {
        prompt_tuning_init: "ZEROS".into(),
        ..peft_meta()
    };
    assert!(write_peft_adapter(&dir.path().join("b"), &sample(2, 3), &bad).is_err());
    let no_text = PeftMeta {
        prompt_tuning_init_text: None,
        ..peft_meta()
    };
    assert!(write_peft_adapter(&dir.path().join("c"), &sample(2, 3), &no_text).is_err());
    assert_eq!(entries(dir.path()), vec!["a"]);
}

#[test]
fn peft_replaces_an_adapter_but_not_a_foreign_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    write_peft_adapter(&out, &sample(2, 4), &peft_meta()).unwrap();
    let p2 = sample(6, 4);
    write_peft_adapter(&out, &p2, &peft_meta()).unwrap();
    assert_eq!(prompt::load(&out).unwrap().0, p2);
    assert_eq!(
        entries(dir.path()),
        vec!["adapter"],
        "old copy and temporaries removed"
    );

    // A folder with other content is left alone.
    let other = dir.path().join("precious");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"keep me").unwrap();
    let e = err_text(write_peft_adapter(&other, &p2, &peft_meta()).unwrap_err());
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"keep me");
    assert_eq!(entries(&other), vec!["notes.txt"]);

    // A file in the way is an error too.
    let file = write_file(dir.path(), "afile", b"x");
    assert!(write_peft_adapter(&file, &p2, &peft_meta()).is_err());
    assert_eq!(entries(dir.path()), vec!["adapter", "afile", "precious"]);
}

#[test]
fn peft_reads_f16_and_bf16_and_checks_config() {
    let dir = tempfile::tempdir().unwrap();
    let vals = [0.5f32, -1.25, 2.0, 3.5, -0.125, 8.0];
    for (dtype, bytes) in [
        (
            safetensors::Dtype::F16,
            vals.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            safetensors::Dtype::BF16,
            vals.iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    ] {
        let d = dir.path().join(format!("{dtype:?}"));
        std::fs::create_dir(&d).unwrap();
        let view = safetensors::tensor::TensorView::new(dtype, vec![2, 3], &bytes).unwrap();
        let st = safetensors::serialize([("prompt_embeddings", view)], None).unwrap();
        std::fs::write(d.join("adapter_model.safetensors"), st).unwrap();
        let (p, f) = prompt::load(&d).unwrap();
        assert_eq!(f, PromptFormat::PeftAdapter);
        assert_eq!((p.rows, p.dim), (2, 3));
        assert_eq!(p.data, vals);
    }

    // A LoRA adapter is not a soft prompt.
    let lora = dir.path().join("lora");
    write_peft_adapter(&lora, &sample(2, 3), &peft_meta()).unwrap();
    std::fs::write(
        lora.join("adapter_config.json"),
        br#"{"peft_type": "LORA", "r": 8}"#,
    )
    .unwrap();
    let e = err_text(prompt::load(&lora).unwrap_err());
    assert!(e.contains("LORA"), "{e}");

    // A safetensors file without prompt_embeddings names what it holds.
    let other = dir.path().join("model.safetensors");
    let z = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &z).unwrap();
    std::fs::write(
        &other,
        safetensors::serialize([("lm_head.weight", view)], None).unwrap(),
    )
    .unwrap();
    let e = err_text(prompt::load(&other).unwrap_err());
    assert!(
        e.contains("prompt_embeddings") && e.contains("lm_head.weight"),
        "{e}"
    );

    // A folder with the pickled adapter_model.bin only.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("adapter_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let e = err_text(prompt::load(&old).unwrap_err());
    assert!(e.contains("pickle") && e.contains("arbitrary code"), "{e}");
}

// ------------------------------------------------------------------------------------------
// reading: width checks, npz, refusals

#[test]
fn width_mismatch_names_both_widths_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt350.zip");
    write_kobold_zip(&path, &sample(3, 512), &meta(), false).unwrap();
    let e = err_text(prompt::load_for_width(&path, 1024).unwrap_err());
    assert!(e.contains("512"), "{e}");
    assert!(e.contains("1024"), "{e}");
    assert!(e.contains("opt350.zip"), "{e}");
    assert_eq!(prompt::load_for_width(&path, 512).unwrap().dim, 512);
}

#[test]
fn npz_mtjsp_tensor_member_loads() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let tensor = npy_with_npyz(&[3, 4], &values);
    let step = {
        use npyz::WriterBuilder;
        let mut buf = Vec::new();
        let mut w = npyz::WriteOptions::<u32>::new()
            .default_dtype()
            .shape(&[])
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.push(&1000).unwrap();
        w.finish().unwrap();
        buf
    };
    // opt_state is a pickled object array in real files; only `tensor` is read.
    let opt_state = npy_by_hand("|O", false, "(1,)", b"\x80\x02N.");
    let archive = make_zip(&[
        ("tensor.npy", &tensor),
        ("opt_state.npy", &opt_state),
        ("step.npy", &step),
    ]);
    let path = write_file(dir.path(), "run.mtjsp", &archive);
    let (p, f) = prompt::load(&path).unwrap();
    assert_eq!(f, PromptFormat::MtjNpz);
    assert_eq!((p.rows, p.dim), (3, 4));
    assert_eq!(p.data, values);

    let npz = write_file(dir.path(), "run.npz", &archive);
    assert_eq!(prompt::load(&npz).unwrap().1, PromptFormat::MtjNpz);
}

#[test]
fn other_float_encodings_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let meta_json: &[u8] = br#"{"name": "x"}"#;

    // float64 is converted
    let v64 = [1.5f64, -2.25, 3.0, 0.1];
    let payload: Vec<u8> = v64.iter().flat_map(|v| v.to_le_bytes()).collect();
    let npy = npy_by_hand("<f8", false, "(2, 2)", &payload);
    let path = write_file(
        dir.path(),
        "f8.zip",
        &make_zip(&[("tensor.npy", &npy), ("meta.json", meta_json)]),
    );
    let (p, f) = prompt::load(&path).unwrap();
    assert_eq!(f, PromptFormat::KoboldZip);
    assert_eq!(p.data, vec![1.5, -2.25, 3.0, 0.1f64 as f32]);

    // V2: raw bfloat16
    let vals = [1.0f32, -0.5, 256.0, 0.0078125, 3.0, -7.0];
    let payload: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
        .collect();
    let npy = npy_by_hand("|V2", false, "(3, 2)", &payload);
    let path = write_file(
        dir.path(),
        "bf16.zip",
        &make_zip(&[("tensor.npy", &npy), ("meta.json", meta_json)]),
    );
    let (p, _) = prompt::load(&path).unwrap();
    assert_eq!((p.rows, p.dim), (3, 2));
    assert_eq!(p.data, vals);

    // Fortran order is transposed into row-major
    let col_major = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]; // [[1,2,3],[4,5,6]]
    let npy = npy_by_hand("<f4", true, "(2, 3)", &f32_payload(&col_major));
    let path = write_file(
        dir.path(),
        "fortran.zip",
        &make_zip(&[("tensor.npy", &npy), ("meta.json", meta_json)]),
    );
    let (p, _) = prompt::load(&path).unwrap();
    assert_eq!(p.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    // big-endian float32
    let payload: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let npy = npy_by_hand(">f4", false, "(1, 2)", &payload);
    let path = write_file(
        dir.path(),
        "be.zip",
        &make_zip(&[("tensor.npy", &npy), ("meta.json", meta_json)]),
    );
    assert_eq!(prompt::load(&path).unwrap().0.data, vec![1.0, 2.0]);
}

#[test]
fn pickle_based_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A plain pickle, also under a KoboldAI-trainer .mtjsp name.
    assert_pickle_refusal(&write_file(dir.path(), "prompt.pt", b"\x80\x02N."));
    assert_pickle_refusal(&write_file(dir.path(), "torch.mtjsp", b"\x80\x04\x95N."));
    // torch.save's legacy format cut after its magic number is a damaged file, not a pickle
    // to refuse.
    let cut = write_file(
        dir.path(),
        "cut.pt",
        b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.",
    );
    let e = err_text(prompt::load(&cut).unwrap_err());
    assert!(
        e.contains("cut.pt") && e.contains("truncated or corrupt"),
        "{e}"
    );
    // A zip holding a pickle that is not a torch.save archive.
    let pickled_zip = make_zip(&[("x.pkl", b"\x80\x02}q\x00.")]);
    assert_pickle_refusal(&write_file(dir.path(), "prompt.bin", &pickled_zip));
    // An mkultra json whose pickle is cut short is a damaged file.
    let mk = br#"{"metadata": {"name": "x", "description": ""}, "tensor": "gAJjdG9yY2gK"}"#;
    let e = err_text(prompt::load(&write_file(dir.path(), "mkultra.json", mk)).unwrap_err());
    assert!(
        e.contains("mkultra.json (mkultra `tensor`): not a pickled tensor"),
        "{e}"
    );
    let mk = br#"{"metadata": {}, "tensor": "not base64!"}"#;
    let e = err_text(prompt::load(&write_file(dir.path(), "bad.json", mk)).unwrap_err());
    assert!(
        e.contains("bad.json") && e.contains("not valid base64"),
        "{e}"
    );
    // npz whose tensor member is an object array
    let obj = npy_by_hand("|O", false, "(2, 3)", b"\x80\x02N.");
    assert_pickle_refusal(&write_file(
        dir.path(),
        "obj.npz",
        &make_zip(&[("tensor.npy", &obj)]),
    ));
}

/// `tests/fixtures/torch_bin/` (made by make_torch_bin.py with torch, PEFT and transformers).
fn torch_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch_bin")
        .join(name)
}

/// The fixture prompt P[i, j] = (i * 64 + j) / 64 - 1, 4 × 64.
fn fixture_values() -> Vec<f32> {
    (0..4 * 64).map(|k| k as f32 / 64.0 - 1.0).collect()
}

#[test]
fn torch_saved_prompts_are_read_as_data() {
    // Older PEFT: adapter_model.bin, as the folder, the weights file or the config.
    for path in [
        torch_fixture("peft_adapter"),
        torch_fixture("peft_adapter/adapter_model.bin"),
        torch_fixture("peft_adapter/adapter_config.json"),
    ] {
        let (p, f) = prompt::load(&path).unwrap();
        assert_eq!(f, PromptFormat::PeftAdapter, "{}", path.display());
        assert_eq!((p.rows, p.dim), (4, 64));
        assert_eq!(p.data, fixture_values());
    }
    // KoboldAI's torch trainer: float16 `tensor` beside an Adafactor state and counters.
    let (p, f) = prompt::load(&torch_fixture("kobold_torch.mtjsp")).unwrap();
    assert_eq!(f, PromptFormat::KoboldTorch);
    assert_eq!((p.rows, p.dim), (4, 64));
    assert_eq!(p.data, fixture_values());

    // A torch.save archive without either tensor names what it holds.
    let e = err_text(prompt::load(&torch_fixture("views.bin")).unwrap_err());
    assert!(e.contains("views.bin"), "{e}");
    assert!(
        e.contains("without a prompt_embeddings (PEFT) or tensor (KoboldAI)"),
        "{e}"
    );
    assert!(e.contains("x, t, tail"), "{e}");
    // An adapter folder whose adapter_model.bin lacks prompt_embeddings.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        torch_fixture("kobold_torch.mtjsp"),
        dir.path().join("adapter_model.bin"),
    )
    .unwrap();
    let e = err_text(prompt::load(dir.path()).unwrap_err());
    assert!(
        e.contains("adapter_model.bin: holds no prompt_embeddings"),
        "{e}"
    );
    // mkultra: base64 of pickle.dumps(tensor) with a [1, 4, 64] tensor.
    let (p, f) = prompt::load(&torch_fixture("mkultra.json")).unwrap();
    assert_eq!(f, PromptFormat::Mkultra);
    assert_eq!((p.rows, p.dim), (4, 64));
    assert_eq!(p.data, fixture_values());

    // PyTorch's pre-1.6 format is read the same way.
    let e = err_text(prompt::load(&torch_fixture("legacy.bin")).unwrap_err());
    assert!(e.contains("legacy.bin") && e.contains("x, t, tail"), "{e}");
}

fn kobold_zip_with(dir: &Path, name: &str, npy: &[u8]) -> PathBuf {
    write_file(
        dir,
        name,
        &make_zip(&[("tensor.npy", npy), ("meta.json", br#"{"name": "x"}"#)]),
    )
}

fn assert_refused(path: &Path, needles: &[&str]) {
    let e = err_text(prompt::load(path).expect_err("must be refused"));
    assert!(
        e.contains(&path.display().to_string()),
        "names the file: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "expected {n:?} in: {e}");
    }
}

#[test]
fn malformed_kobold_zips_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1-D tensor
    let p = kobold_zip_with(d, "1d.zip", &npy_with_npyz(&[6], &[0.0; 6]));
    assert_refused(&p, &["2-D", "[6]"]);
    // 3-D tensor
    let p = kobold_zip_with(d, "3d.zip", &npy_with_npyz(&[1, 2, 3], &[0.0; 6]));
    assert_refused(&p, &["2-D", "[1, 2, 3]"]);
    // integer dtype
    let p = kobold_zip_with(
        d,
        "int.zip",
        &npy_by_hand("<i4", false, "(2, 2)", &[0u8; 16]),
    );
    assert_refused(&p, &["<i4", "float32"]);
    // NaN
    let p = kobold_zip_with(
        d,
        "nan.zip",
        &npy_by_hand("<f4", false, "(1, 3)", &f32_payload(&[0.0, f32::NAN, 1.0])),
    );
    assert_refused(&p, &["non-finite", "row 0, column 1"]);
    // inf
    let p = kobold_zip_with(
        d,
        "inf.zip",
        &npy_by_hand("<f4", false, "(1, 2)", &f32_payload(&[f32::INFINITY, 1.0])),
    );
    assert_refused(&p, &["non-finite"]);
    // truncated data
    let p = kobold_zip_with(
        d,
        "short.zip",
        &npy_by_hand("<f4", false, "(4, 4)", &[0u8; 20]),
    );
    assert_refused(&p, &["truncated"]);
    // zero rows
    let p = kobold_zip_with(d, "empty.zip", &npy_by_hand("<f4", false, "(0, 4)", &[]));
    assert_refused(&p, &["no soft-prompt values"]);
    // absurd shape: no panic, no huge allocation
    let p = kobold_zip_with(
        d,
        "huge.zip",
        &npy_by_hand(
            "<f4",
            false,
            "(18446744073709551615, 18446744073709551615)",
            &[],
        ),
    );
    assert_refused(&p, &["implausibly large"]);
    // garbage header
    let mut junk = b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'".to_vec();
    junk.extend_from_slice(&[0u8; 8]);
    let p = kobold_zip_with(d, "junk.zip", &junk);
    assert_refused(&p, &["not a valid .npy"]);
    // more malformed headers: unterminated string, deep nesting, an integer beyond u64
    for (i, header) in [
        "{'descr': '<f4, 'fortran_order': False, 'shape': (1, 1), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((((((((((((1,),),),),),),),),),),),),),),),),),),),), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 1), }",
        "{'descr': '<f4', 'shape': (1, 1), }",
        "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (1, 1), }",
    ]
    .iter()
    .enumerate()
    {
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
        npy.extend_from_slice(header.as_bytes());
        npy.extend_from_slice(&[0u8; 16]);
        let p = kobold_zip_with(d, &format!("hdr{i}.zip"), &npy);
        assert_refused(&p, &[]);
    }
    // not npy at all
    let p = kobold_zip_with(d, "text.zip", b"hello");
    assert_refused(&p, &["not a valid .npy"]);
    // missing member
    let p = write_file(d, "nomember.zip", &make_zip(&[("meta.json", b"{}")]));
    assert_refused(&p, &["tensor.npy", "meta.json"]);
    // truncated archive
    let mut good = Vec::new();
    let full = d.join("full.zip");
    write_kobold_zip(&full, &sample(4, 8), &meta(), false).unwrap();
    good.extend_from_slice(&std::fs::read(&full).unwrap());
    let p = write_file(d, "cut.zip", &good[..good.len() / 2]);
    assert_refused(&p, &["zip"]);
    // empty file, unknown file, bare npy, missing file
    assert_refused(&write_file(d, "empty.bin2", b""), &["empty"]);
    assert_refused(&write_file(d, "what.dat", b"just some text"), &["KoboldAI"]);
    assert_refused(
        &write_file(d, "bare.npy", &npy_with_npyz(&[1, 2], &[0.0, 1.0])),
        &["tensor.npy"],
    );
    assert_refused(&d.join("does-not-exist.zip"), &["cannot open"]);
    // a folder that is not an adapter
    let folder = d.join("folder");
    std::fs::create_dir(&folder).unwrap();
    assert_refused(&folder, &["adapter_model.safetensors"]);
}

/// A KoboldAI zip as Python's `zipfile` writes it with ZIP_LZMA for tensor.npy (the reference
/// exporter's choice) and STORED for meta.json: tensor [[0, 1, 2], [3, 4, 5]] float32.
const LZMA_ZIP_HEX: &[&str] = &[
    "504b03043f0002000e00000021004fe9002a65000000980000000a00000074656e736f722e6e7079",
    "090405005d0000800000499386a4ded382796a5b0d233836ab9d9d4c4deee36dc31deb672266ee1c",
    "a440baf899d7492726e2172d796933396e472536bcfcfc950897f8132e64035c478ff2275a40a2df",
    "f8cd8c523e8ef894e77fb6f5e8ae1821dafd577740504b03041400000000000000210075f3f0de10",
    "00000010000000090000006d6574612e6a736f6e7b226e616d65223a20226c7a6d61227d504b0102",
    "3f033f0002000e00000021004fe9002a65000000980000000a000000000000000000000080010000",
    "000074656e736f722e6e7079504b010214031400000000000000210075f3f0de1000000010000000",
    "09000000000000000000000080018d0000006d6574612e6a736f6e504b050600000000020002006f",
    "000000c40000000000",
];

#[test]
fn lzma_compressed_members_are_read() {
    let hex: String = LZMA_ZIP_HEX.concat();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "lzma.zip", &bytes);
    let (p, f) = prompt::load(&path).unwrap();
    assert_eq!(f, PromptFormat::KoboldZip);
    assert_eq!((p.rows, p.dim), (2, 3));
    assert_eq!(p.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn damaged_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zip_path = d.join("ok.zip");
    write_kobold_zip(&zip_path, &sample(3, 4), &meta(), false).unwrap();
    let zip_bytes = std::fs::read(&zip_path).unwrap();
    let adapter = d.join("adapter");
    write_peft_adapter(&adapter, &sample(3, 4), &peft_meta()).unwrap();
    let st_bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();

    for (name, good) in [("z.zip", &zip_bytes), ("w.safetensors", &st_bytes)] {
        let target = d.join(name);
        // every truncation
        for cut in 0..good.len() {
            std::fs::write(&target, &good[..cut]).unwrap();
            assert!(prompt::load(&target).is_err(), "{name} cut at {cut}");
        }
        // single-byte corruptions: either an error or a valid prompt, never a panic
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xA5;
            std::fs::write(&target, &bad).unwrap();
            if let Ok((p, _)) = prompt::load(&target) {
                assert_eq!(p.data.len(), p.rows * p.dim);
                assert!(p.data.iter().all(|v| v.is_finite()));
            }
        }
    }
}
