//! Output conventions of kubectl: aligned columns separated by three spaces, no colour (the
//! output is the same on a terminal and in a pipe), `-o json|yaml` for scripts.

use clap::ValueEnum;
use serde::Serialize;

/// `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned tables for people.
    #[default]
    Text,
    /// One JSON document (stable field names, `docs/operations.md`).
    Json,
    /// The same as YAML.
    Yaml,
}

/// Renders `value` as JSON or YAML (ending with a newline), or `text` for [`Format::Text`].
///
/// # Errors
///
/// The value cannot be serialized (not for the report types of this module).
pub fn render<T: Serialize>(format: Format, value: &T, text: impl FnOnce(&T) -> String) -> Result<String, String> {
    match format {
        Format::Text => Ok(text(value)),
        Format::Json => serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml_ng::to_string(value).map_err(|e| e.to_string()),
    }
}

/// An aligned table: a header row and rows, columns padded to their widest cell, three spaces
/// between columns, no trailing spaces.
#[must_use]
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count()) + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_spaces() {
        let t = table(&["NAME", "X"], vec![vec!["a".into(), "1".into()], vec!["longer".into(), "".into()]]);
        assert_eq!(t, "NAME     X\na        1\nlonger\n");
    }
}
