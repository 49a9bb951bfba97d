//! Human output: aligned `key: value` lines and plain column tables.

use std::fmt::Write;

/// `key: value` lines with the values aligned; empty values are skipped.
#[derive(Default)]
pub struct KeyValues(Vec<(String, String)>);

impl KeyValues {
    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        if !value.is_empty() {
            self.0.push((key.to_owned(), value));
        }
        self
    }

    pub fn render(&self) -> String {
        let width = self
            .0
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.0 {
            let pad = width - key.chars().count();
            // Continuation lines of a multi-line value line up under the first.
            let value = value.replace('\n', &format!("\n{}", " ".repeat(width + 2)));
            let _ = writeln!(out, "{key}:{} {value}", " ".repeat(pad));
        }
        out
    }
}

/// Columns separated by two spaces, a header row first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.push_str(&" ".repeat(pad));
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_columns_line_up() {
        let mut kv = KeyValues::default();
        kv.add("name", "a")
            .add("description", "")
            .add("smtp.port", "25");
        assert_eq!(kv.render(), "name:      a\nsmtp.port: 25\n");
        let t = table(
            &["NAME", "PORT"],
            &[
                vec!["ab".into(), "1".into()],
                vec!["Дежурный".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME      PORT\nab        1\nДежурный  2\n");
    }
}
