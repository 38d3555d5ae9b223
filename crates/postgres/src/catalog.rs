//! What the PostgreSQL catalog says about tables: which match a pattern, their columns and
//! types, their primary key. Plus identifier and literal quoting.

use tokio_postgres::Client;

use crate::error::PgError;

/// A table by schema and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableName {
    /// The schema (`public`).
    pub schema: String,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`).
    pub fn parse(text: &str) -> TableName {
        match text.split_once('.') {
            Some((schema, name)) => TableName {
                schema: schema.to_string(),
                name: name.to_string(),
            },
            None => TableName {
                schema: "public".to_string(),
                name: text.to_string(),
            },
        }
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// `schema.table`: the stream name.
    pub fn stream(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type's name in `pg_type` (`int4`, `numeric`, `_text` for arrays).
    pub typname: String,
    /// Its type as SQL spells it (`numeric(12,2)`, `character varying(20)`).
    pub sql_type: String,
    /// The type modifier (`-1` when none).
    pub typmod: i32,
    /// Whether it may be null.
    pub nullable: bool,
}

/// A table's columns (in order) and primary key.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// The table.
    pub table: TableName,
    /// Columns in `attnum` order.
    pub columns: Vec<Column>,
    /// Primary key columns in key order (empty when the table has none).
    pub primary_key: Vec<String>,
}

impl TableInfo {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Quotes an identifier: `"a""b"`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal: `'it''s'` (standard_conforming_strings is on since 9.1).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A glob (`*` any run, `?` one character) as an anchored POSIX regular expression.
pub fn glob_to_regex(glob: &str) -> String {
    let mut out = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out.push('$');
    out
}

/// The ordinary and partitioned tables whose `schema.table` matches one of `patterns`
/// (`table` alone means `public.table`; `*` and `?` are wildcards), sorted, without duplicates.
pub async fn matching_tables(
    client: &Client,
    patterns: &[String],
) -> Result<Vec<TableName>, PgError> {
    let mut out = Vec::new();
    for pattern in patterns {
        let t = TableName::parse(pattern);
        let regex = glob_to_regex(&format!("{}.{}", t.schema, t.name));
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND (n.nspname || '.' || c.relname) ~ $1 ORDER BY 1, 2",
                &[&regex],
            )
            .await
            .map_err(|e| PgError::query(format!("list tables matching {pattern}"), e))?;
        if rows.is_empty() {
            return Err(PgError::Invalid(format!(
                "no table matches {pattern:?} (patterns are schema.table with * and ? wildcards; \
                 a name without a schema means public)"
            )));
        }
        for row in rows {
            let name = TableName {
                schema: row.get(0),
                name: row.get(1),
            };
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// The columns and primary key of `table`, or `None` if it does not exist.
pub async fn table_info(client: &Client, table: &TableName) -> Result<Option<TableInfo>, PgError> {
    let what = || format!("read the columns of {}", table.stream());
    let exists = client
        .query_opt(
            "SELECT c.oid::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(|e| PgError::query(what(), e))?;
    let Some(oid) = exists.map(|r| r.get::<_, i64>(0)) else {
        return Ok(None);
    };
    let rows = client
        .query(
            "SELECT a.attname::text, \
                    CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END::text, \
                    format_type(a.atttypid, a.atttypmod), \
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
                    NOT a.attnotnull \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype \
             WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::query(what(), e))?;
    let columns = rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            typname: r.get(1),
            sql_type: r.get(2),
            typmod: r.get(3),
            nullable: r.get(4),
        })
        .collect();
    let pk = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::int8::oid AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(|e| PgError::query(what(), e))?;
    Ok(Some(TableInfo {
        table: table.clone(),
        columns,
        primary_key: pk.iter().map(|r| r.get(0)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_globs() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(glob_to_regex("public.order_*"), "^public\\.order_.*$");
        assert_eq!(TableName::parse("orders").stream(), "public.orders");
        assert_eq!(TableName::parse("s.t").quoted(), "\"s\".\"t\"");
    }
}
