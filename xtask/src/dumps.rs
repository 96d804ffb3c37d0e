//! Django fixtures (`dumpdata` output) and the model map: counted while streaming, never held whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    io::BufReader,
    path::Path,
};

use anyhow::{Context, Result};
use serde::{
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

/// One model as the helper reports it: its table and its many-to-many tables by field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub table: String,
    #[serde(default)]
    pub m2m: BTreeMap<String, String>,
}

/// Every table the models fill, their m2m tables included, sorted, each once.
pub fn model_tables(models: &[ModelInfo]) -> Vec<String> {
    let mut tables: Vec<String> = models
        .iter()
        .flat_map(|m| std::iter::once(m.table.clone()).chain(m.m2m.values().cloned()))
        .collect();
    tables.sort();
    tables.dedup();
    tables
}

pub fn read_models(path: &Path) -> Result<Vec<ModelInfo>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not the helper's model list", path.display()))
}

/// What a fixture holds: objects per model and entries per (model, m2m field).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FixtureCounts {
    pub objects: BTreeMap<String, u64>,
    pub m2m: BTreeMap<(String, String), u64>,
}

impl FixtureCounts {
    pub fn total_objects(&self) -> u64 {
        self.objects.values().sum()
    }

    pub fn merge(&mut self, other: &FixtureCounts) {
        for (model, n) in &other.objects {
            *self.objects.entry(model.clone()).or_default() += n;
        }
        for (key, n) in &other.m2m {
            *self.m2m.entry(key.clone()).or_default() += n;
        }
    }

    /// Rows per table that loading this fixture produces, using the model map.
    pub fn rows_per_table(&self, models: &[ModelInfo]) -> Result<BTreeMap<String, u64>> {
        let by_model: BTreeMap<&str, &ModelInfo> =
            models.iter().map(|m| (m.model.as_str(), m)).collect();
        let mut rows = BTreeMap::new();
        for model in models {
            rows.insert(model.table.clone(), 0);
            for table in model.m2m.values() {
                rows.insert(table.clone(), 0);
            }
        }
        for (model, n) in &self.objects {
            let info = by_model.get(model.as_str()).with_context(|| {
                format!("the dump has objects of model `{model}`, which Sentry 4 does not know: is the dump from another install?")
            })?;
            *rows.entry(info.table.clone()).or_default() += n;
        }
        for ((model, field), n) in &self.m2m {
            if let Some(table) = by_model
                .get(model.as_str())
                .and_then(|info| info.m2m.get(field))
            {
                *rows.entry(table.clone()).or_default() += n;
            }
        }
        Ok(rows)
    }
}

/// Counts a fixture file, streaming. A truncated or non-JSON file is an error that says so.
pub fn count_fixture(
    path: &Path,
    m2m_fields: &BTreeSet<(String, String)>,
) -> Result<FixtureCounts> {
    let file =
        fs::File::open(path).with_context(|| format!("dump {} is missing", path.display()))?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, file));
    let mut counts = FixtureCounts::default();
    de.deserialize_seq(FixtureVisitor {
        counts: &mut counts,
        m2m_fields,
    })
    .and_then(|()| de.end())
    .map_err(|err| {
        let what = if err.is_eof() {
            "is truncated"
        } else {
            "is not a valid JSON fixture"
        };
        anyhow::anyhow!("dump {} {what} ({err})", path.display())
    })?;
    Ok(counts)
}

struct FixtureVisitor<'a> {
    counts: &'a mut FixtureCounts,
    m2m_fields: &'a BTreeSet<(String, String)>,
}

impl<'de> Visitor<'de> for FixtureVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of fixture objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(object) = seq.next_element_seed(ObjectSeed {
            m2m_fields: self.m2m_fields,
        })? {
            *self.counts.objects.entry(object.model.clone()).or_default() += 1;
            for (field, n) in object.m2m {
                *self
                    .counts
                    .m2m
                    .entry((object.model.clone(), field))
                    .or_default() += n;
            }
        }
        Ok(())
    }
}

struct Object {
    model: String,
    m2m: Vec<(String, u64)>,
}

struct ObjectSeed<'a> {
    m2m_fields: &'a BTreeSet<(String, String)>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Object;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Object, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Object;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a fixture object {model, pk, fields}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        // serde_json keeps key order, and Django writes `pk`, `model`, `fields` in that order, so
        // the model is known when the fields come.
        let mut model: Option<String> = None;
        let mut m2m = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "model" => model = Some(map.next_value()?),
                "fields" => {
                    let model = model
                        .clone()
                        .ok_or_else(|| de::Error::custom("`fields` before `model`"))?;
                    let fields = map.next_value_seed(FieldsSeed {
                        model: &model,
                        m2m_fields: self.m2m_fields,
                    })?;
                    m2m = fields;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let model = model.ok_or_else(|| de::Error::missing_field("model"))?;
        Ok(Object { model, m2m })
    }
}

struct FieldsSeed<'a> {
    model: &'a str,
    m2m_fields: &'a BTreeSet<(String, String)>,
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Vec<(String, u64)>;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Vec<(String, u64)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the object's fields")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(field) = map.next_key::<String>()? {
            if self
                .m2m_fields
                .contains(&(self.model.to_string(), field.clone()))
            {
                let items: Vec<IgnoredAny> = map.next_value()?;
                out.push((field, items.len() as u64));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

pub fn m2m_fields(models: &[ModelInfo]) -> BTreeSet<(String, String)> {
    models
        .iter()
        .flat_map(|m| {
            m.m2m
                .keys()
                .map(move |field| (m.model.clone(), field.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<ModelInfo> {
        serde_json::from_str(
            r#"[{"model": "auth.user", "table": "auth_user", "m2m": {"groups": "auth_user_groups"}},
                {"model": "auth.group", "table": "auth_group"},
                {"model": "sentry.group", "table": "sentry_groupedmessage"}]"#,
        )
        .unwrap()
    }

    fn count(text: &str) -> Result<FixtureCounts> {
        let dir =
            std::env::temp_dir().join(format!("dumps-test-{}-{}", std::process::id(), text.len()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.json");
        fs::write(&path, text).unwrap();
        let result = count_fixture(&path, &m2m_fields(&models()));
        fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn counts_objects_and_m2m_entries_per_table() {
        let counts = count(
            r#"[{"pk": 1, "model": "auth.user", "fields": {"username": "a", "groups": [1, 2]}},
                {"pk": 2, "model": "auth.user", "fields": {"username": "b", "groups": []}},
                {"pk": 1, "model": "auth.group", "fields": {"name": "g"}},
                {"pk": 7, "model": "sentry.group", "fields": {"data": "[1,2,3]"}}]"#,
        )
        .unwrap();
        assert_eq!(counts.total_objects(), 4);
        let rows = counts.rows_per_table(&models()).unwrap();
        let expected: BTreeMap<String, u64> = [
            ("auth_group", 1),
            ("auth_user", 2),
            ("auth_user_groups", 2),
            ("sentry_groupedmessage", 1),
        ]
        .into_iter()
        .map(|(t, n)| (t.to_string(), n))
        .collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn truncated_and_garbage_dumps_are_named() {
        let err =
            count(r#"[{"pk": 1, "model": "auth.user", "fields": {"username": "a""#).unwrap_err();
        assert!(err.to_string().contains("is truncated"), "{err}");
        let err = count("Traceback (most recent call last):").unwrap_err();
        assert!(
            err.to_string().contains("is not a valid JSON fixture"),
            "{err}"
        );
        let err = count(r#"[{"pk": 1, "model": "auth.user", "fields": {}}] trailing"#).unwrap_err();
        assert!(
            err.to_string().contains("is not a valid JSON fixture"),
            "{err}"
        );
    }

    #[test]
    fn unknown_models_are_an_error() {
        let counts = count(r#"[{"pk": 1, "model": "other.thing", "fields": {}}]"#).unwrap();
        let err = counts.rows_per_table(&models()).unwrap_err();
        assert!(err.to_string().contains("model `other.thing`"), "{err}");
    }
}
