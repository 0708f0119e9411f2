//! Metadata filters, applied before ranking.
//!
//! A filter names a field of the document's `metadata` JSON by a dotted path
//! (`"year"`, `"source.venue"`) and tests it: equality with a number, string
//! or boolean, or a numeric range. Filters combine with `all` (and) and
//! `any` (or). Values are read once per segment and field into a column
//! cache, so repeated queries pay only a scan of that column.

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// A test on document metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// `field == value` (number, string or boolean).
    Eq {
        field: String,
        value: serde_json::Value,
    },
    /// Numeric range; absent bounds are open.
    Range {
        field: String,
        #[serde(default)]
        gte: Option<f64>,
        #[serde(default)]
        gt: Option<f64>,
        #[serde(default)]
        lte: Option<f64>,
        #[serde(default)]
        lt: Option<f64>,
    },
    All(Vec<Filter>),
    Any(Vec<Filter>),
}

/// One metadata value as the filter sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Missing,
    Num(f64),
    Str(String),
    Bool(bool),
}

impl FieldValue {
    pub fn from_json(v: Option<&serde_json::Value>) -> Self {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_f64().map_or(Self::Missing, Self::Num),
            Some(serde_json::Value::String(s)) => Self::Str(s.clone()),
            Some(serde_json::Value::Bool(b)) => Self::Bool(*b),
            _ => Self::Missing,
        }
    }
}

impl Filter {
    /// Checks the filter's own shape.
    pub fn validate(&self) -> Result<()> {
        match self {
            Filter::Eq { field, value } => {
                check_field(field)?;
                if !(value.is_number() || value.is_string() || value.is_boolean()) {
                    return Err(IndexError::InvalidParameter(format!(
                        "filter on {field:?}: eq takes a number, string or boolean"
                    )));
                }
                Ok(())
            }
            Filter::Range {
                field,
                gte,
                gt,
                lte,
                lt,
            } => {
                check_field(field)?;
                if [gte, gt, lte, lt].iter().all(|b| b.is_none()) {
                    return Err(IndexError::InvalidParameter(format!(
                        "filter on {field:?}: range without bounds"
                    )));
                }
                if [gte, gt, lte, lt]
                    .iter()
                    .any(|b| b.is_some_and(f64::is_nan))
                {
                    return Err(IndexError::InvalidParameter(format!(
                        "filter on {field:?}: NaN bound"
                    )));
                }
                Ok(())
            }
            Filter::All(fs) | Filter::Any(fs) => fs.iter().try_for_each(Filter::validate),
        }
    }

    /// Fields the filter reads.
    pub fn fields(&self, out: &mut Vec<String>) {
        match self {
            Filter::Eq { field, .. } | Filter::Range { field, .. } => out.push(field.clone()),
            Filter::All(fs) | Filter::Any(fs) => fs.iter().for_each(|f| f.fields(out)),
        }
    }

    /// Evaluates the filter with `get` returning a field's value.
    pub fn matches<'a>(&self, get: &dyn Fn(&str) -> &'a FieldValue) -> bool {
        match self {
            Filter::Eq { field, value } => match (get(field), value) {
                (FieldValue::Num(x), serde_json::Value::Number(n)) => n.as_f64() == Some(*x),
                (FieldValue::Str(x), serde_json::Value::String(s)) => x == s,
                (FieldValue::Bool(x), serde_json::Value::Bool(b)) => x == b,
                _ => false,
            },
            Filter::Range {
                field,
                gte,
                gt,
                lte,
                lt,
            } => match get(field) {
                FieldValue::Num(x) => {
                    gte.is_none_or(|b| *x >= b)
                        && gt.is_none_or(|b| *x > b)
                        && lte.is_none_or(|b| *x <= b)
                        && lt.is_none_or(|b| *x < b)
                }
                _ => false,
            },
            Filter::All(fs) => fs.iter().all(|f| f.matches(get)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(get)),
        }
    }
}

fn check_field(field: &str) -> Result<()> {
    if field.is_empty() || field.split('.').any(str::is_empty) {
        return Err(IndexError::InvalidParameter(format!(
            "filter field {field:?} is not a dotted path"
        )));
    }
    Ok(())
}

/// Looks up a dotted path in a JSON object.
pub fn lookup<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(f: &Filter, meta: serde_json::Value) -> bool {
        let mut names = Vec::new();
        f.fields(&mut names);
        let vals: Vec<(String, FieldValue)> = names
            .into_iter()
            .map(|n| {
                let v = FieldValue::from_json(lookup(&meta, &n));
                (n, v)
            })
            .collect();
        static MISSING: FieldValue = FieldValue::Missing;
        f.matches(&|name| {
            vals.iter()
                .find(|(n, _)| n == name)
                .map_or(&MISSING, |(_, v)| v)
        })
    }

    #[test]
    fn equality_range_and_combinators() {
        let f: Filter = serde_json::from_value(json!({"all": [
            {"range": {"field": "year", "gte": 2000, "lt": 2010}},
            {"any": [{"eq": {"field": "src.venue", "value": "nature"}}, {"eq": {"field": "open", "value": true}}]}
        ]}))
        .unwrap();
        f.validate().unwrap();
        assert!(eval(&f, json!({"year": 2005, "src": {"venue": "nature"}})));
        assert!(eval(&f, json!({"year": 2000, "open": true})));
        assert!(!eval(&f, json!({"year": 2010, "open": true})));
        assert!(
            !eval(&f, json!({"year": "2005", "open": true})),
            "strings are not numbers"
        );
        assert!(
            !eval(&f, json!({"open": true})),
            "missing field fails a range"
        );
        let bad = Filter::Range {
            field: "x".into(),
            gte: None,
            gt: None,
            lte: None,
            lt: None,
        };
        assert!(bad.validate().is_err());
        assert!(Filter::Eq {
            field: "a..b".into(),
            value: json!(1)
        }
        .validate()
        .is_err());
    }
}
