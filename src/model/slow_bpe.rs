//! GPT-2's byte-level BPE built from its *slow* tokenizer files, for models that ship
//! `vocab.json` and `merges.txt` but no `tokenizer.json` (many KoboldAI-era OPT, GPT-J and
//! fairseq-dense fine-tunes).
//!
//! What is built is what transformers' `GPT2Tokenizer` builds from the same files: a BPE model
//! (no unknown token, no subword prefix or suffix), the GPT-2 byte-level pre-tokenizer and
//! decoder (`add_prefix_space` from `tokenizer_config.json`, default false), and the added
//! tokens: `added_tokens_decoder` (tokenizer_config.json) and `added_tokens.json`, whose ids
//! must follow the vocabulary, then the special tokens named in `special_tokens_map.json` or
//! `tokenizer_config.json` (`bos_token`, `eos_token`, …, `additional_special_tokens`;
//! GPT2Tokenizer's `<|endoftext|>` for bos, eos and unk when none is named). A special token
//! missing from the vocabulary gets the next id, as in transformers.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// GPT-2's vocabulary file (token → id).
pub const VOCAB_FILE: &str = "vocab.json";
/// GPT-2's merges file (one merge per line after a `#version` header).
pub const MERGES_FILE: &str = "merges.txt";
/// The slow tokenizer's settings and special tokens.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// Special tokens by role (older models).
pub const SPECIAL_MAP_FILE: &str = "special_tokens_map.json";
/// Added tokens by id (older models).
pub const ADDED_FILE: &str = "added_tokens.json";

/// The files besides `vocab.json` and `merges.txt` that shape the tokenizer, all optional.
pub const EXTRA_FILES: [&str; 3] = [CONFIG_FILE, SPECIAL_MAP_FILE, ADDED_FILE];

/// Special-token roles, in the order transformers gives new ids to them.
const ROLES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Whether `dir` holds the two files a GPT-2 BPE is built from.
pub fn present(dir: &Path) -> bool {
    dir.join(VOCAB_FILE).is_file() && dir.join(MERGES_FILE).is_file()
}

/// One added token as the files describe it.
#[derive(Debug, Clone)]
struct Spec {
    token: AddedToken,
    /// The id a file declares for it, checked against the id it gets.
    declared: Option<(u32, &'static str)>,
}

/// Builds the tokenizer of the slow files in `dir`. Errors name the file and say what to do.
pub fn build(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join(VOCAB_FILE);
    let merges = dir.join(MERGES_FILE);
    let config = read_json(&dir.join(CONFIG_FILE))?;
    let special_map = read_json(&dir.join(SPECIAL_MAP_FILE))?;
    let added = read_json(&dir.join(ADDED_FILE))?;

    let get = |key: &str| -> Option<&Value> {
        [&special_map, &config]
            .into_iter()
            .flatten()
            .find_map(|j| j.get(key).filter(|v| !v.is_null()))
    };
    if let Some(class) = config
        .as_ref()
        .and_then(|c| c.get("tokenizer_class"))
        .and_then(Value::as_str)
        && !class.starts_with("GPT2Tokenizer")
    {
        bail!(
            "{}: tokenizer_class is {class}, and the model has no tokenizer.json; softtune \
             builds a tokenizer from vocab.json and merges.txt only for GPT2Tokenizer. Make \
             tokenizer.json in Python: AutoTokenizer.from_pretrained(\"<model>\")\
             .save_pretrained(\"<folder>\"), put it beside config.json and point --model there",
            dir.join(CONFIG_FILE).display()
        );
    }
    let add_prefix_space = match config.as_ref().and_then(|c| c.get("add_prefix_space")) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => bail!(
            "{}: add_prefix_space is {other}, expected true or false",
            dir.join(CONFIG_FILE).display()
        ),
    };

    let model = BPE::from_file(&path_str(&vocab)?, &path_str(&merges)?)
        .build()
        .map_err(|e| {
            anyhow!(
                "{} / {}: cannot build GPT-2's tokenizer: {e}; download both files again",
                vocab.display(),
                merges.display()
            )
        })?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));

    // Tokens with declared ids, in id order, then the named special tokens.
    let mut specs: Vec<Spec> = Vec::new();
    if let Some(decoder) = config.as_ref().and_then(|c| c.get("added_tokens_decoder")) {
        let file = dir.join(CONFIG_FILE);
        let Value::Object(map) = decoder else {
            bail!("{}: added_tokens_decoder is not an object", file.display());
        };
        for (id, v) in map {
            let id: u32 = id.parse().map_err(|_| {
                anyhow!(
                    "{}: added_tokens_decoder has the key {id:?}, expected a token id",
                    file.display()
                )
            })?;
            let token = added_token(v, None)
                .with_context(|| format!("{}: added_tokens_decoder[{id}]", file.display()))?;
            specs.push(Spec {
                token,
                declared: Some((id, CONFIG_FILE)),
            });
        }
    }
    if let Some(added) = &added {
        let Value::Object(map) = added else {
            bail!(
                "{}: expected an object of token → id",
                dir.join(ADDED_FILE).display()
            );
        };
        for (content, id) in map {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: the id of {content:?} is {id}, expected a token id",
                        dir.join(ADDED_FILE).display()
                    )
                })?;
            if specs.iter().any(|s| s.token.content == *content) {
                continue;
            }
            specs.push(Spec {
                token: AddedToken::from(content.clone(), false),
                declared: Some((id, ADDED_FILE)),
            });
        }
    }
    specs.sort_by_key(|s| s.declared.map(|d| d.0));

    let mut named: Vec<AddedToken> = Vec::new();
    for role in ROLES {
        let value = match get(role) {
            Some(v) => Some(v.clone()),
            // GPT2Tokenizer's defaults.
            None if matches!(role, "bos_token" | "eos_token" | "unk_token") => {
                Some(Value::String("<|endoftext|>".into()))
            }
            None => None,
        };
        if let Some(v) = value {
            named.push(
                added_token(&v, Some(true))
                    .with_context(|| format!("{}: {role}", dir.display()))?,
            );
        }
    }
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        match get(key) {
            None => {}
            Some(Value::Array(items)) => {
                for v in items {
                    named.push(
                        added_token(v, Some(true))
                            .with_context(|| format!("{}: {key}", dir.display()))?,
                    );
                }
            }
            Some(_) => bail!("{}: {key} is not a list of tokens", dir.display()),
        }
    }
    for t in named {
        match specs.iter_mut().find(|s| s.token.content == t.content) {
            Some(s) => s.token.special = true,
            None => specs.push(Spec {
                token: t,
                declared: None,
            }),
        }
    }

    for s in specs {
        let content = s.token.content.clone();
        let added = if s.token.special {
            tok.add_special_tokens([s.token])
        } else {
            tok.add_tokens([s.token])
        };
        added.map_err(|e| anyhow!("{}: cannot add the token {content:?}: {e}", dir.display()))?;
        let got = tok.token_to_id(&content);
        if let Some((id, file)) = s.declared
            && got != Some(id)
        {
            bail!(
                "{}: the added token {content:?} has id {id}, but after the {} tokens of \
                 vocab.json it gets {}; the files belong to different tokenizers. Download them \
                 again, or make tokenizer.json in Python with AutoTokenizer",
                dir.join(file).display(),
                tok.get_vocab_size(false),
                got.map_or("no id".to_string(), |g| g.to_string())
            );
        }
    }
    Ok(tok)
}

/// An added token from a string or transformers' AddedToken dict. `special`: what the role
/// says (named special tokens); otherwise the dict's `special` field.
fn added_token(v: &Value, special: Option<bool>) -> Result<AddedToken> {
    let flag = |key: &str, default: bool| -> Result<bool> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => bail!("{key} is {other}, expected true or false"),
        }
    };
    match v {
        Value::String(s) => Ok(AddedToken::from(s.clone(), special.unwrap_or(false))),
        Value::Object(map) => {
            let content = map
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("a token without a \"content\" string"))?;
            let special = match special {
                Some(s) => s,
                None => flag("special", false)?,
            };
            Ok(AddedToken::from(content.to_string(), special)
                .single_word(flag("single_word", false)?)
                .lstrip(flag("lstrip", false)?)
                .rstrip(flag("rstrip", false)?)
                .normalized(flag("normalized", !special)?))
        }
        other => bail!("a token is {other}, expected a string or an object with \"content\""),
    }
}

/// The JSON in `path`, or `None` when there is no such file.
fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            anyhow!(
                "{}: not valid JSON ({e}); download it again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("{}: cannot read: {e}", path.display())),
    }
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: the path is not valid UTF-8", p.display()))
}
