//! Colour themes: TOML files of styles. The built-in ones (`themes/*.toml`) are embedded in
//! the binary; `<config dir>/themes/NAME.toml` adds or overrides one by name.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use ratatui::style::{Color, Modifier, Style};

/// The built-in themes: (name, TOML).
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../themes/default.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
    ("mono", include_str!("../../themes/mono.toml")),
];

/// The styles the wizard draws with.
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub title: Style,
    pub text: Style,
    pub muted: Style,
    pub focus: Style,
    pub current: Style,
    pub ok: Style,
    pub warning: Style,
    pub error: Style,
    pub border: Style,
}

impl Default for Theme {
    fn default() -> Self {
        Theme::parse("default", BUILTIN[0].1).expect("the built-in default theme parses")
    }
}

/// Parses a style: colour names (foreground), `on <colour>` (background) and the modifiers
/// bold, dim, italic, underlined, reversed.
pub fn parse_style(s: &str) -> Result<Style> {
    let mut style = Style::default();
    let mut words = s.split_whitespace();
    while let Some(w) = words.next() {
        let lower = w.to_ascii_lowercase();
        style = match lower.as_str() {
            "bold" => style.add_modifier(Modifier::BOLD),
            "dim" => style.add_modifier(Modifier::DIM),
            "italic" => style.add_modifier(Modifier::ITALIC),
            "underlined" => style.add_modifier(Modifier::UNDERLINED),
            "reversed" => style.add_modifier(Modifier::REVERSED),
            "on" => {
                let c = words
                    .next()
                    .ok_or_else(|| anyhow!("\"{s}\": `on` needs a colour"))?;
                style.bg(color(c)?)
            }
            _ => style.fg(color(w)?),
        };
    }
    Ok(style)
}

fn color(name: &str) -> Result<Color> {
    Color::from_str(name).map_err(|_| {
        anyhow!("\"{name}\" is not a colour (use black, red, green, yellow, blue, magenta, cyan, gray, darkgray, light…, white, reset)")
    })
}

impl Theme {
    /// Parses a theme file's text; every key is required and unknown keys are errors.
    pub fn parse(name: &str, text: &str) -> Result<Theme> {
        let map: BTreeMap<String, String> =
            toml::from_str(text).map_err(|e| anyhow!("theme {name}: {e}"))?;
        const KEYS: [&str; 9] = [
            "title", "text", "muted", "focus", "current", "ok", "warning", "error", "border",
        ];
        if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            bail!(
                "theme {name}: unknown key `{k}` (known: {})",
                KEYS.join(", ")
            );
        }
        let get = |k: &str| -> Result<Style> {
            let v = map
                .get(k)
                .ok_or_else(|| anyhow!("theme {name}: `{k}` is missing"))?;
            parse_style(v).with_context(|| format!("theme {name}: `{k}`"))
        };
        Ok(Theme {
            name: name.to_string(),
            title: get("title")?,
            text: get("text")?,
            muted: get("muted")?,
            focus: get("focus")?,
            current: get("current")?,
            ok: get("ok")?,
            warning: get("warning")?,
            error: get("error")?,
            border: get("border")?,
        })
    }

    /// A theme by name: `<user_dir>/NAME.toml` if it exists, else a built-in one.
    pub fn load(name: &str, user_dir: Option<&Path>) -> Result<Theme> {
        if let Some(dir) = user_dir {
            let p = dir.join(format!("{name}.toml"));
            if p.is_file() {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                return Theme::parse(name, &text).with_context(|| format!("{}", p.display()));
            }
        }
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Theme::parse(n, text),
            None => bail!(
                "no theme \"{name}\": built-in themes are {}; user themes go in {}",
                BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                user_dir.map_or("<config dir>/themes".into(), |d| d.display().to_string())
            ),
        }
    }

    /// The theme to use: `--theme NAME` if given, else `mono` when `NO_COLOR` is set (and
    /// not empty), else `default`. User themes come from `<config dir>/themes/`.
    pub fn choose(arg: Option<&str>) -> Result<Theme> {
        let user = crate::config::profile::config_dir()
            .ok()
            .map(|d| d.join("themes"));
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let name = arg.unwrap_or(if no_color { "mono" } else { "default" });
        Theme::load(name, user.as_deref())
    }
}
