//! The settings files that shape a tokenizer built from *slow* tokenizer files (GPT-2's
//! `vocab.json` + `merges.txt` in [`super::slow_bpe`], a sentencepiece `tokenizer.model` in
//! [`super::spm`]): `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json`,
//! all optional, and the added tokens they name.
//!
//! Added tokens follow transformers: `added_tokens_decoder` (tokenizer_config.json) and
//! `added_tokens.json` declare ids, which must be the ids the tokens get after the vocabulary;
//! then the special tokens named by role (`bos_token`, `eos_token`, …) and in
//! `additional_special_tokens`, with the tokenizer class's defaults for roles no file names. A
//! special token missing from the vocabulary gets the next id, as in transformers.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokenizers::{AddedToken, Tokenizer};

/// The slow tokenizer's settings and special tokens.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// Special tokens by role (older models).
pub const SPECIAL_MAP_FILE: &str = "special_tokens_map.json";
/// Added tokens by id (older models).
pub const ADDED_FILE: &str = "added_tokens.json";

/// The settings files beside the vocabulary, all optional.
pub const SETTINGS_FILES: [&str; 3] = [CONFIG_FILE, SPECIAL_MAP_FILE, ADDED_FILE];

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

/// One added token as the files describe it.
#[derive(Debug, Clone)]
struct Spec {
    token: AddedToken,
    /// The id a file declares for it, checked against the id it gets.
    declared: Option<(u32, &'static str)>,
}

/// The settings files of one tokenizer folder.
pub struct Settings {
    dir: PathBuf,
    config: Option<Value>,
    special_map: Option<Value>,
    added: Option<Value>,
}

impl Settings {
    /// Reads the settings files in `dir`; a missing file is no settings, a damaged one an error
    /// naming it.
    pub fn read(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            config: read_json(&dir.join(CONFIG_FILE))?,
            special_map: read_json(&dir.join(SPECIAL_MAP_FILE))?,
            added: read_json(&dir.join(ADDED_FILE))?,
        })
    }

    /// `tokenizer_config.json`'s path (for messages).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `tokenizer_class` from tokenizer_config.json.
    pub fn tokenizer_class(&self) -> Option<&str> {
        self.config
            .as_ref()
            .and_then(|c| c.get("tokenizer_class"))
            .and_then(Value::as_str)
    }

    /// A true/false setting of tokenizer_config.json; `None` when it is absent or null.
    pub fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.config.as_ref().and_then(|c| c.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => bail!(
                "{}: {key} is {other}, expected true or false",
                self.config_path().display()
            ),
        }
    }

    /// Whether tokenizer_config.json declares any `added_tokens_decoder`.
    pub fn has_added_tokens_decoder(&self) -> bool {
        self.config
            .as_ref()
            .and_then(|c| c.get("added_tokens_decoder"))
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    }

    /// The contents `added_tokens_decoder` declares, by id (for renaming vocabulary pieces).
    pub fn declared_contents(&self) -> Result<Vec<(u32, String)>> {
        Ok(self
            .declared()?
            .into_iter()
            .filter_map(|s| match s.declared {
                Some((id, CONFIG_FILE)) => Some((id, s.token.content)),
                _ => None,
            })
            .collect())
    }

    /// A special token named by role or key in special_tokens_map.json or tokenizer_config.json.
    fn get(&self, key: &str) -> Option<&Value> {
        [&self.special_map, &self.config]
            .into_iter()
            .flatten()
            .find_map(|j| j.get(key).filter(|v| !v.is_null()))
    }

    /// The tokens with declared ids, in id order.
    fn declared(&self) -> Result<Vec<Spec>> {
        let mut specs: Vec<Spec> = Vec::new();
        if let Some(decoder) = self
            .config
            .as_ref()
            .and_then(|c| c.get("added_tokens_decoder"))
        {
            let file = self.config_path();
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
        if let Some(added) = &self.added {
            let file = self.dir.join(ADDED_FILE);
            let Value::Object(map) = added else {
                bail!("{}: expected an object of token → id", file.display());
            };
            for (content, id) in map {
                let id = id
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: the id of {content:?} is {id}, expected a token id",
                            file.display()
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
        Ok(specs)
    }

    /// Adds to `tok`: `first` (tokens the vocabulary file itself marks, such as sentencepiece's
    /// control pieces), the tokens with declared ids, then the special tokens named by role
    /// (`defaults` for roles no file names) and in `additional_special_tokens`. `raw_declared`:
    /// the tokens of `added_tokens_decoder` are matched on the raw text (not normalized).
    /// A declared id that the token does not get is an error: the files belong to different
    /// tokenizers.
    pub fn add_tokens(
        &self,
        tok: &mut Tokenizer,
        first: Vec<AddedToken>,
        defaults: &[(&str, &str)],
        raw_declared: bool,
    ) -> Result<()> {
        let dir = &self.dir;
        let mut specs: Vec<Spec> = first
            .into_iter()
            .map(|token| Spec {
                token,
                declared: None,
            })
            .collect();
        // A declared token's own flags win over the vocabulary's.
        for s in self.declared()? {
            match specs
                .iter_mut()
                .find(|f| f.token.content == s.token.content)
            {
                Some(f) => *f = s,
                None => specs.push(s),
            }
        }

        let mut named: Vec<AddedToken> = Vec::new();
        for role in ROLES {
            let value = match self.get(role) {
                Some(v) => Some(v.clone()),
                None => defaults
                    .iter()
                    .find(|(r, _)| *r == role)
                    .map(|(_, t)| Value::String(t.to_string())),
            };
            if let Some(v) = value {
                named.push(
                    added_token(&v, Some(true))
                        .with_context(|| format!("{}: {role}", dir.display()))?,
                );
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            match self.get(key) {
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

        let base = tok.get_vocab_size(false);
        for s in specs {
            let mut token = s.token;
            if raw_declared && matches!(s.declared, Some((_, CONFIG_FILE))) {
                token.normalized = false;
            }
            let content = token.content.clone();
            let added = if token.special {
                tok.add_special_tokens([token])
            } else {
                tok.add_tokens([token])
            };
            added
                .map_err(|e| anyhow!("{}: cannot add the token {content:?}: {e}", dir.display()))?;
            let got = tok.token_to_id(&content);
            if let Some((id, file)) = s.declared
                && got != Some(id)
            {
                bail!(
                    "{}: the added token {content:?} has id {id}, but after the {base} tokens of \
                     the vocabulary it gets {}; the files belong to different tokenizers. \
                     Download them again, or make tokenizer.json in Python with AutoTokenizer",
                    dir.join(file).display(),
                    got.map_or("no id".to_string(), |g| g.to_string())
                );
            }
        }
        Ok(())
    }
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
