//! [`Trainable`]: which parameters a stage trains — parsing with a clear error, and name matching.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Trainable, TrainableGroup};

/// What a `trainable` value may be, as shown in error messages.
const EXPECTED: &str = r#""all", "adapter", "layout", "base" or a list of name globs like ["blocks.*.adapter_*"]"#;

impl Trainable {
    /// Whether the parameter called `param_name` trains under this rule.
    ///
    /// * `all`: every parameter.
    /// * `adapter`: `blocks.N.adapter_*` (`blocks.3.adapter_gate`, `blocks.0.adapter_attn.q.weight`).
    /// * `layout`: the adapter and the layout encoder (`box_mlp.*`, `layout_class_embed.*`).
    /// * `base`: every parameter but the adapter's.
    /// * globs: any glob matches the whole name; `*` matches any characters, dots included, so
    ///   `blocks.*.adapter_*` matches `blocks.0.adapter_attn.q.weight`. A glob that does not parse matches
    ///   nothing ([`RunConfig::validate`](super::RunConfig::validate) reports it).
    pub fn matches(&self, param_name: &str) -> bool {
        match self {
            Self::Group(TrainableGroup::All) => true,
            Self::Group(TrainableGroup::Adapter) => is_adapter_param(param_name),
            Self::Group(TrainableGroup::Layout) => crate::model::is_layout_param(param_name),
            Self::Group(TrainableGroup::Base) => !is_adapter_param(param_name),
            Self::Globs(globs) => globs
                .iter()
                .any(|g| glob::Pattern::new(g).map(|p| p.matches_with(param_name, glob_options())).unwrap_or(false)),
        }
    }
}

/// Whether a parameter belongs to the spatial adapter (`blocks.N.adapter_*`; one rule for the whole crate).
pub fn is_adapter_param(param_name: &str) -> bool {
    crate::model::is_adapter_param(param_name)
}

/// Options for matching parameter names: `*` crosses dots (names have no path separators), case matters.
fn glob_options() -> glob::MatchOptions {
    glob::MatchOptions { case_sensitive: true, require_literal_separator: false, require_literal_leading_dot: false }
}

impl fmt::Display for Trainable {
    /// `all`, `adapter`, `base`, or the globs as a TOML-style list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Group(TrainableGroup::All) => f.write_str("all"),
            Self::Group(TrainableGroup::Adapter) => f.write_str("adapter"),
            Self::Group(TrainableGroup::Layout) => f.write_str("layout"),
            Self::Group(TrainableGroup::Base) => f.write_str("base"),
            Self::Globs(globs) => {
                let quoted: Vec<String> = globs.iter().map(|g| format!("{g:?}")).collect();
                write!(f, "[{}]", quoted.join(", "))
            }
        }
    }
}

impl<'de> Deserialize<'de> for Trainable {
    /// Accepts `"all"`, `"adapter"`, `"layout"`, `"base"` or an array of strings; anything else fails with
    /// `expected "all", "adapter", "layout", "base" or a list of name globs like ["blocks.*.adapter_*"], found "adaptr"`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TrainableVisitor)
    }
}

struct TrainableVisitor;

impl<'de> Visitor<'de> for TrainableVisitor {
    type Value = Trainable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Trainable, E> {
        match value {
            "all" => Ok(Trainable::Group(TrainableGroup::All)),
            "adapter" => Ok(Trainable::Group(TrainableGroup::Adapter)),
            "layout" => Ok(Trainable::Group(TrainableGroup::Layout)),
            "base" => Ok(Trainable::Group(TrainableGroup::Base)),
            other => {
                let hint = super::parse::did_you_mean(other, &["all", "adapter", "layout", "base"])
                    .map(|s| format!(" — did you mean \"{s}\"?"))
                    .unwrap_or_default();
                Err(E::custom(format!("expected {EXPECTED}, found {other:?}{hint}")))
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Trainable, A::Error> {
        let mut globs = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(glob) = seq.next_element::<String>()? {
            globs.push(glob);
        }
        Ok(Trainable::Globs(globs))
    }
}
