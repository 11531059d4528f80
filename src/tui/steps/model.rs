//! Step 3: the frozen model.

use std::path::Path;
use std::sync::Arc;

use super::{FieldDef, Report};
use crate::inspect::{human_bytes, human_count};
use crate::model::ModelConfig;
use crate::model::source::{self, HubOptions};
use crate::model::tokenizer::Tokenizer;
use crate::tui::app::App;

pub const FIELDS: &[FieldDef] = &[
    FieldDef {
        key: "model.id",
        label: "Model",
        help: "Hugging Face id or local folder (e.g. EleutherAI/pythia-160m, KoboldAI/OPT-2.7B-Nerys-v2)",
        choices: &[],
        lines: 1,
    },
    FieldDef {
        key: "model.revision",
        label: "Revision",
        help: "Hub branch, tag or commit (default main); ignored for a local folder",
        choices: &[],
        lines: 1,
    },
];

/// What the wizard knows about the model.
#[derive(Clone)]
pub struct ModelInfo {
    pub id: String,
    pub arch: String,
    pub d_embed: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
    /// Known once the weights are on disk.
    pub parameters: Option<usize>,
    pub stored_dtype: Option<burn::tensor::DType>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// The parsed config.json (shapes for the memory estimate).
    pub config: ModelConfig,
}

/// Inspects the model: fully when its files are local (a folder or the Hub cache), else only
/// its config.json (fetched from the Hub without the weights).
pub fn analyse(id: &str, revision: &str) -> Result<ModelInfo, String> {
    let mut hub = HubOptions::from_env();
    if !revision.is_empty() {
        hub.revision = Some(revision.to_string());
    }
    let local = Path::new(id).is_dir();
    if local {
        // An unsupported architecture is named before anything else is looked at.
        let config = Path::new(id).join(source::CONFIG_FILE);
        if config.is_file() {
            ModelConfig::from_file(&config).map_err(|e| format!("{e:#}"))?;
        }
    }
    let offline = HubOptions {
        offline: true,
        ..hub.clone()
    };
    match crate::inspect::inspect(id, if local { &hub } else { &offline }) {
        Ok(s) => {
            let files = source::resolve(id, &offline).ok();
            if local && let Some(f) = &files {
                // A local folder gets nothing downloaded: without a tokenizer it cannot train.
                f.tokenizer_path().map_err(|e| format!("{e:#}"))?;
            }
            let tok = files.as_ref().map(tokenizer).transpose()?.flatten();
            Ok(ModelInfo {
                id: id.to_string(),
                arch: s.model_type,
                d_embed: s.d_embed,
                hidden: s.hidden,
                layers: s.layers,
                heads: s.heads,
                context: s.context_length,
                parameters: Some(s.parameters),
                stored_dtype: Some(s.stored_dtype),
                tokenizer: tok,
                config: s.config,
            })
        }
        Err(e) if local => Err(format!("{e:#}")),
        Err(_) => {
            let files = source::resolve_config_only(id, &hub).map_err(|e| format!("{e:#}"))?;
            let cfg = ModelConfig::from_file(&files.config).map_err(|e| format!("{e:#}"))?;
            Ok(ModelInfo {
                id: id.to_string(),
                arch: cfg.arch.model_type().to_string(),
                d_embed: cfg.d_embed,
                hidden: cfg.hidden,
                layers: cfg.n_layers,
                heads: cfg.n_heads,
                context: cfg.context_length(),
                parameters: None,
                stored_dtype: None,
                tokenizer: tokenizer(&files)?,
                config: cfg,
            })
        }
    }
}

/// The model's tokenizer, if its files are on disk. Files that are there but cannot be built
/// are an error: the run would fail on them.
fn tokenizer(files: &source::ModelFiles) -> Result<Option<Arc<Tokenizer>>, String> {
    files
        .tokenizer
        .as_ref()
        .map(|p| Tokenizer::from_file(p).map(Arc::new))
        .transpose()
        .map_err(|e| format!("{e:#}"))
}

pub fn check(app: &App) -> Report {
    let mut r = Report::default();
    if app.value("model.id").trim().is_empty() {
        r.error(
            "model.id",
            "required: a Hugging Face id (e.g. EleutherAI/pythia-160m) or a model folder",
        );
        return r;
    }
    match app.model_info() {
        None => r.info("checked when you leave the field"),
        Some(Err(e)) => r.error("model.id", e.clone()),
        Some(Ok(m)) => {
            r.info(format!("architecture    {}", m.arch));
            match m.parameters {
                Some(p) => r.info(format!("parameters      {p} ({})", human_count(p))),
                None => r.info("parameters      unknown until the weights are downloaded"),
            }
            r.info(format!("embedding width {} (soft-prompt width)", m.d_embed));
            r.info(format!("context length  {} tokens", m.context));
            if let (Some(p), Some(d)) = (m.parameters, m.stored_dtype) {
                r.info(format!(
                    "stored dtype    {}, {} of weights",
                    crate::model::weights::dtype_name(d),
                    human_bytes(p * crate::model::weights::dtype_bytes(d))
                ));
            } else {
                r.info("stored dtype    unknown: the weights are downloaded when the run starts");
            }
            if m.tokenizer.is_none() {
                r.warn("no tokenizer found yet (tokenizer.json, vocab.json with merges.txt, or tokenizer.model): it is downloaded when the run starts");
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokenizer files found (here a sentencepiece model under a refused class) that cannot be
    /// built are an error naming why, not "no tokenizer yet".
    #[test]
    fn tokenizer_files_that_cannot_be_built_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm_tokenizer");
        let model = dir.path().join("tokenizer.model");
        std::fs::copy(fixture.join("llama/tokenizer.model"), &model).unwrap();
        let mut files = source::ModelFiles {
            id: "owner/name".into(),
            root: dir.path().to_path_buf(),
            config: dir.path().join("config.json"),
            tokenizer: None,
            weights: Vec::new(),
            index: None,
            from_hub: true,
        };
        assert!(tokenizer(&files).unwrap().is_none());
        files.tokenizer = Some(model);
        assert!(tokenizer(&files).unwrap().is_some());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"tokenizer_class": "T5Tokenizer"}"#,
        )
        .unwrap();
        match tokenizer(&files) {
            Err(e) => assert!(e.contains("T5Tokenizer"), "{e}"),
            Ok(t) => panic!("expected an error, got a tokenizer: {}", t.is_some()),
        }
    }
}
