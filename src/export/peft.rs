//! PEFT prompt-tuning adapter: a folder with `adapter_model.safetensors` (one F32 tensor
//! `prompt_embeddings` `[num_virtual_tokens, token_dim]`, metadata `{"format": "pt"}`) and
//! `adapter_config.json` (indent 2, sorted keys), loadable with `PeftModel.from_pretrained`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use super::{ensure_parent, sync_dir, temp_sibling, write_new_synced};
use crate::prompt::SoftPrompt;

/// The PEFT version written into `adapter_config.json`.
pub const PEFT_VERSION: &str = "0.21.2";

/// Files a previous adapter export may hold; a folder holding anything else is not replaced.
const ADAPTER_FILES: [&str; 3] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
];

/// The model-dependent fields of `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeftMeta {
    pub base_model_name_or_path: String,
    pub num_attention_heads: usize,
    pub num_layers: usize,
    /// `"TEXT"`, `"SAMPLE_VOCAB"` or `"RANDOM"`.
    pub prompt_tuning_init: String,
    /// Required by PEFT when `prompt_tuning_init` is `"TEXT"`.
    pub prompt_tuning_init_text: Option<String>,
    /// For `"TEXT"`, defaults to `base_model_name_or_path` (PEFT requires one).
    pub tokenizer_name_or_path: Option<String>,
}

/// Writes a PEFT prompt-tuning adapter folder at `dir`. The files are written into a temporary
/// folder beside `dir`, which is then renamed into place; an existing adapter folder at `dir` is
/// renamed away first and deleted only once the new one is in place. A folder at `dir` that holds
/// anything besides adapter files is left alone and reported as an error.
pub fn write_peft_adapter(dir: &Path, prompt: &SoftPrompt, meta: &PeftMeta) -> Result<()> {
    let label = dir.display().to_string();
    prompt
        .check()
        .map_err(|e| anyhow!("{label}: refusing to export: {e}"))?;
    let config = config_json(prompt, meta).map_err(|e| anyhow!("{label}: {e}"))?;
    let weights = safetensors_bytes(prompt).map_err(|e| anyhow!("{label}: {e}"))?;

    let exists = match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => bail!(
            "{label}: exists and is not a folder; choose another output path for the PEFT adapter"
        ),
        Err(_) => false,
    };
    if exists {
        let entries =
            fs::read_dir(dir).map_err(|e| anyhow!("{label}: cannot list the folder: {e}"))?;
        let mut foreign = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| anyhow!("{label}: cannot list the folder: {e}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !(is_file && ADAPTER_FILES.contains(&name.as_str())) {
                foreign.push(name);
            }
        }
        if !foreign.is_empty() {
            foreign.sort();
            foreign.truncate(5);
            bail!(
                "{label}: the folder exists and holds other files ({}); softtune only replaces a \
                 folder holding a previous adapter. Choose a new folder, or empty this one",
                foreign.join(", ")
            );
        }
    }

    let parent = ensure_parent(dir)?;
    let tmp = temp_sibling(dir, "tmp")?;
    let staged = (|| -> std::io::Result<()> {
        fs::create_dir(&tmp)?;
        write_new_synced(&tmp.join("adapter_model.safetensors"), &weights)?;
        write_new_synced(&tmp.join("adapter_config.json"), config.as_bytes())?;
        sync_dir(&tmp);
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = fs::remove_dir_all(&tmp);
        bail!(
            "{label}: cannot write the adapter ({e}); check that the location is writable and has free space"
        );
    }

    if exists {
        let old = temp_sibling(dir, "old")?;
        if let Err(e) = fs::rename(dir, &old) {
            let _ = fs::remove_dir_all(&tmp);
            bail!("{label}: cannot move the previous adapter aside to replace it ({e})");
        }
        if let Err(e) = fs::rename(&tmp, dir) {
            // Put the previous adapter back.
            let restored = fs::rename(&old, dir).is_ok();
            let _ = fs::remove_dir_all(&tmp);
            bail!(
                "{label}: cannot move the new adapter into place ({e}){}",
                if restored {
                    "; the previous adapter is unchanged".to_owned()
                } else {
                    format!("; the previous adapter is at {}", old.display())
                }
            );
        }
        sync_dir(&parent);
        // The new adapter is in place; a failure to delete the old copy is not fatal.
        let _ = fs::remove_dir_all(&old);
    } else {
        if let Err(e) = fs::rename(&tmp, dir) {
            let _ = fs::remove_dir_all(&tmp);
            bail!("{label}: cannot move the new adapter into place ({e})");
        }
        sync_dir(&parent);
    }
    Ok(())
}

/// `adapter_model.safetensors`: `prompt_embeddings` as F32 `[rows, dim]`, metadata format=pt.
fn safetensors_bytes(prompt: &SoftPrompt) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(prompt.data.len() * 4);
    for &v in &prompt.data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![prompt.rows, prompt.dim],
        &raw,
    )
    .map_err(|e| anyhow!("cannot build prompt_embeddings: {e}"))?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize([("prompt_embeddings", view)], Some(metadata))
        .map_err(|e| anyhow!("cannot build adapter_model.safetensors: {e}"))
}

/// `adapter_config.json` as PEFT writes it: indent 2, keys sorted.
fn config_json(prompt: &SoftPrompt, meta: &PeftMeta) -> Result<String> {
    let init = meta.prompt_tuning_init.as_str();
    if !matches!(init, "TEXT" | "SAMPLE_VOCAB" | "RANDOM") {
        bail!(
            "prompt_tuning_init is {init:?}; PEFT accepts \"TEXT\", \"SAMPLE_VOCAB\" or \"RANDOM\""
        );
    }
    let mut tokenizer = meta.tokenizer_name_or_path.clone();
    if init == "TEXT" {
        // PEFT's PromptTuningConfig refuses TEXT without both of these.
        if meta.prompt_tuning_init_text.is_none() {
            bail!(
                "prompt_tuning_init is TEXT but no prompt_tuning_init_text is given; PEFT refuses such a config"
            );
        }
        if tokenizer.as_deref().is_none_or(str::is_empty) {
            tokenizer = Some(meta.base_model_name_or_path.clone());
        }
    }
    let mut cfg: BTreeMap<&str, Value> = BTreeMap::new();
    cfg.insert("auto_mapping", Value::Null);
    cfg.insert(
        "base_model_name_or_path",
        json!(meta.base_model_name_or_path),
    );
    cfg.insert("inference_mode", json!(true));
    cfg.insert("modules_to_save", Value::Null);
    cfg.insert("num_attention_heads", json!(meta.num_attention_heads));
    cfg.insert("num_layers", json!(meta.num_layers));
    cfg.insert("num_transformer_submodules", json!(1));
    cfg.insert("num_virtual_tokens", json!(prompt.rows));
    cfg.insert("peft_type", json!("PROMPT_TUNING"));
    cfg.insert("peft_version", json!(PEFT_VERSION));
    cfg.insert("prompt_tuning_init", json!(init));
    cfg.insert(
        "prompt_tuning_init_text",
        json!(meta.prompt_tuning_init_text),
    );
    cfg.insert("revision", Value::Null);
    cfg.insert("task_type", json!("CAUSAL_LM"));
    cfg.insert("token_dim", json!(prompt.dim));
    cfg.insert("tokenizer_kwargs", Value::Null);
    cfg.insert("tokenizer_name_or_path", json!(tokenizer));
    Ok(serde_json::to_string_pretty(&cfg)?)
}
