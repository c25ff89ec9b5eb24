//! Chunked table checksums in the manner of pt-table-checksum, as pure SQL builders.
//!
//! A table is cut into ranges of its primary key of about `chunk_rows` rows each. Every chunk
//! is summarised on both servers by `COUNT(*)` and
//! `BIT_XOR(CRC32(CONCAT_WS('#', cols…, CONCAT(ISNULL(col)…))))`, so that two chunks with the
//! same rows give the same pair whatever the physical row order. The ISNULL flags tell `NULL`
//! from the empty string, which `CONCAT_WS` would otherwise both skip. The first and last chunk
//! are open-ended, so rows that exist only on the replica, beyond the source's last key, are
//! still counted.
//!
//! Floating-point columns (`FLOAT`, `DOUBLE`) enter the row hash as `CAST(col AS DOUBLE)`, not
//! as themselves: the server writes a `FLOAT` as text with 6 significant digits (250.00002
//! reads `250`), while a `DOUBLE` expression is written as the shortest text that reads back
//! as the same double (MariaDB 10.3+, MySQL 8.0), and a `FLOAT` widens to `DOUBLE` exactly. So
//! two different stored values always hash differently. `CAST(.. AS DECIMAL(65,30))` was not
//! taken: it rounds below 1e-30 and saturates above 1e35; `HEX()` of a number is the hex of its
//! integer part. (`-0` and `0` still hash alike, as SQL compares them.)
//!
//! This module builds statements and compares results; which snapshot they run in is decided by
//! the `db` module. Tables without a primary key are checksummed as one chunk.

use mysql_async::Value;
use serde::Serialize;

use super::dialect::{ident, quote};

/// One column, as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name.
    pub name: String,
    /// Whether it is nullable.
    pub nullable: bool,
    /// `DATA_TYPE`, lower case: `int`, `float`, `double`, `varchar`, ...
    pub data_type: String,
}

impl Column {
    /// Whether the column holds binary floating point, whose default text loses precision.
    pub fn is_floating(&self) -> bool {
        matches!(self.data_type.as_str(), "float" | "double" | "real")
    }

    /// The column as it enters the row hash: its exact value as text.
    fn hashed(&self) -> String {
        if self.is_floating() {
            format!("CAST({} AS DOUBLE)", ident(&self.name))
        } else {
            ident(&self.name)
        }
    }
}

/// A table and the columns the checksum needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// All columns in ordinal order.
    pub columns: Vec<Column>,
    /// Primary key columns in key order (empty when the table has none).
    pub primary_key: Vec<String>,
}

impl TableShape {
    /// `schema.table` for messages.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The columns for messages: `id int, note varchar NULL`.
    pub fn describe_columns(&self) -> String {
        self.columns
            .iter()
            .map(|c| {
                let null = if c.nullable { " NULL" } else { "" };
                format!("{} {}{null}", c.name, c.data_type)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn qualified_name(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.table))
    }

    fn pk_list(&self) -> String {
        self.primary_key
            .iter()
            .map(|c| ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The row-hash expression of one row.
    pub fn row_hash(&self) -> String {
        let mut parts: Vec<String> = self.columns.iter().map(Column::hashed).collect();
        let nullable: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.nullable)
            .map(|c| format!("ISNULL({})", ident(&c.name)))
            .collect();
        if !nullable.is_empty() {
            parts.push(format!("CONCAT({})", nullable.join(", ")));
        }
        format!("CRC32(CONCAT_WS({}, {}))", quote("#"), parts.join(", "))
    }

    /// The query for the upper bound of the next chunk: the key of the `chunk_rows`-th row
    /// after `lower` (or from the start when `has_lower` is false). No row means the rest of
    /// the table is the last chunk. Parameters: [`TableShape::lower_params`] when `has_lower`.
    pub fn next_boundary_query(&self, has_lower: bool, chunk_rows: u64) -> String {
        let mut sql = format!(
            "SELECT {} FROM {} FORCE INDEX (PRIMARY)",
            self.pk_list(),
            self.qualified_name()
        );
        if has_lower {
            sql.push_str(&format!(" WHERE {}", self.after("?")));
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT 1 OFFSET {}",
            self.pk_list(),
            chunk_rows.saturating_sub(1)
        ));
        sql
    }

    /// The checksum query of the chunk `(lower, upper]`; either bound may be open. Parameters:
    /// the lower bound's then the upper bound's, each expanded by [`TableShape::bound_params`].
    pub fn checksum_query(&self, has_lower: bool, has_upper: bool) -> String {
        let mut conds = Vec::new();
        if has_lower {
            conds.push(self.after("?"));
        }
        if has_upper {
            conds.push(self.at_or_before("?"));
        }
        let index = if self.primary_key.is_empty() {
            String::new()
        } else {
            " FORCE INDEX (PRIMARY)".to_string()
        };
        let mut sql = format!(
            "SELECT COUNT(*), COALESCE(LOWER(CONV(BIT_XOR(CAST({} AS UNSIGNED)), 10, 16)), '0') \
             FROM {}{index}",
            self.row_hash(),
            self.qualified_name()
        );
        if !conds.is_empty() {
            sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
        }
        sql
    }

    /// `(k1, k2) > (x, y)` written as `k1 > x OR (k1 = x AND k2 > y)`, which every optimizer
    /// turns into an index range (row constructors are not always).
    fn after(&self, p: &str) -> String {
        self.lexicographic(">", p)
    }

    fn at_or_before(&self, p: &str) -> String {
        self.lexicographic("<=", p)
    }

    fn lexicographic(&self, last_op: &str, p: &str) -> String {
        let strict = if last_op == ">" { ">" } else { "<" };
        let k = &self.primary_key;
        let mut alts = Vec::new();
        for i in 0..k.len() {
            let mut terms: Vec<String> = k[..i]
                .iter()
                .map(|c| format!("{} = {p}", ident(c)))
                .collect();
            let op = if i + 1 == k.len() { last_op } else { strict };
            terms.push(format!("{} {op} {p}", ident(&k[i])));
            alts.push(if terms.len() == 1 {
                terms.remove(0)
            } else {
                format!("({})", terms.join(" AND "))
            });
        }
        if alts.len() == 1 {
            alts.remove(0)
        } else {
            format!("({})", alts.join(" OR "))
        }
    }

    /// The parameters for one bound in the order the placeholders of `after`/`at_or_before`
    /// appear: for key `(a, b)` and bound `(x, y)`: `x, x, y`.
    pub fn bound_params(&self, bound: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..bound.len() {
            out.extend(bound[..=i].iter().cloned());
        }
        out
    }

    /// Same as [`TableShape::bound_params`], for the lower bound of a boundary query.
    pub fn lower_params(&self, bound: &[Value]) -> Vec<Value> {
        self.bound_params(bound)
    }
}

/// One chunk: the key range `(lower, upper]`, either end open.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Position in the table, from 0.
    pub index: usize,
    /// Exclusive lower key, `None` from the start of the table.
    pub lower: Option<Vec<Value>>,
    /// Inclusive upper key, `None` to the end of the table.
    pub upper: Option<Vec<Value>>,
}

impl Chunk {
    /// The range for humans, e.g. `id in (1000, 2000]` or `id in (-∞, 1000]`.
    pub fn describe(&self, table: &TableShape) -> String {
        if table.primary_key.is_empty() {
            return "whole table (no primary key)".into();
        }
        let key = if table.primary_key.len() == 1 {
            table.primary_key[0].clone()
        } else {
            format!("({})", table.primary_key.join(", "))
        };
        let show = |b: &Option<Vec<Value>>, open: &str| match b {
            None => open.to_string(),
            Some(v) if v.len() == 1 => display_value(&v[0]),
            Some(v) => format!(
                "({})",
                v.iter().map(display_value).collect::<Vec<_>>().join(", ")
            ),
        };
        format!(
            "{key} in ({}, {}]",
            show(&self.lower, "-inf"),
            show(&self.upper, "+inf")
        )
    }
}

/// A value as it would be written in SQL, for messages.
pub fn display_value(v: &Value) -> String {
    match v {
        Value::NULL => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) if s.parse::<f64>().is_ok() => s.to_string(),
            Ok(s) => quote(s),
            Err(_) => format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        },
        other => other.as_sql(false),
    }
}

/// One side's summary of a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkSum {
    /// `COUNT(*)`.
    pub rows: u64,
    /// The XOR of the row CRCs, in hex.
    pub crc: String,
}

/// A chunk whose summaries differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkDiff {
    /// `schema.table`.
    pub table: String,
    /// Chunk number in the table, from 0.
    pub chunk: usize,
    /// The key range, as [`Chunk::describe`] writes it.
    pub range: String,
    /// The source's summary.
    pub source: ChunkSum,
    /// The replica's summary.
    pub replica: ChunkSum,
}

impl std::fmt::Display for ChunkDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: chunk {} ({}) differs: source {} rows crc {}, replica {} rows crc {}",
            self.table,
            self.chunk,
            self.range,
            self.source.rows,
            self.source.crc,
            self.replica.rows,
            self.replica.crc
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(pk: &[&str], cols: &[(&str, bool)]) -> TableShape {
        typed(
            pk,
            &cols
                .iter()
                .map(|(c, n)| (*c, *n, "int"))
                .collect::<Vec<_>>(),
        )
    }

    fn typed(pk: &[&str], cols: &[(&str, bool, &str)]) -> TableShape {
        TableShape {
            schema: "app".into(),
            table: "items".into(),
            columns: cols
                .iter()
                .map(|(c, n, t)| Column {
                    name: c.to_string(),
                    nullable: *n,
                    data_type: t.to_string(),
                })
                .collect(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn row_hash_flags_nullable_columns_only() {
        let t = shape(&["id"], &[("id", false), ("name", true), ("note", true)]);
        assert_eq!(
            t.row_hash(),
            "CRC32(CONCAT_WS('#', `id`, `name`, `note`, CONCAT(ISNULL(`name`), ISNULL(`note`))))"
        );
        let t = shape(&["id"], &[("id", false)]);
        assert_eq!(t.row_hash(), "CRC32(CONCAT_WS('#', `id`))");
    }

    #[test]
    fn floating_columns_hash_at_full_precision() {
        let t = typed(
            &["id"],
            &[
                ("id", false, "int"),
                ("f", true, "float"),
                ("d", false, "double"),
                ("n", false, "decimal"),
            ],
        );
        assert_eq!(
            t.row_hash(),
            "CRC32(CONCAT_WS('#', `id`, CAST(`f` AS DOUBLE), CAST(`d` AS DOUBLE), `n`, \
             CONCAT(ISNULL(`f`))))"
        );
    }

    #[test]
    fn queries_single_key() {
        let t = shape(&["id"], &[("id", false)]);
        let cases = [
            (
                t.next_boundary_query(false, 1000),
                "SELECT `id` FROM `app`.`items` FORCE INDEX (PRIMARY) ORDER BY `id` LIMIT 1 OFFSET 999",
            ),
            (
                t.next_boundary_query(true, 1000),
                "SELECT `id` FROM `app`.`items` FORCE INDEX (PRIMARY) WHERE `id` > ? ORDER BY `id` LIMIT 1 OFFSET 999",
            ),
            (
                t.checksum_query(true, true),
                "SELECT COUNT(*), COALESCE(LOWER(CONV(BIT_XOR(CAST(CRC32(CONCAT_WS('#', `id`)) AS UNSIGNED)), 10, 16)), '0') \
                 FROM `app`.`items` FORCE INDEX (PRIMARY) WHERE `id` > ? AND `id` <= ?",
            ),
            (
                t.checksum_query(false, false),
                "SELECT COUNT(*), COALESCE(LOWER(CONV(BIT_XOR(CAST(CRC32(CONCAT_WS('#', `id`)) AS UNSIGNED)), 10, 16)), '0') \
                 FROM `app`.`items` FORCE INDEX (PRIMARY)",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn composite_key_ranges_expand() {
        let t = shape(
            &["a", "b", "c"],
            &[("a", false), ("b", false), ("c", false)],
        );
        assert_eq!(
            t.after("?"),
            "(`a` > ? OR (`a` = ? AND `b` > ?) OR (`a` = ? AND `b` = ? AND `c` > ?))"
        );
        assert_eq!(
            t.at_or_before("?"),
            "(`a` < ? OR (`a` = ? AND `b` < ?) OR (`a` = ? AND `b` = ? AND `c` <= ?))"
        );
        let p = t.bound_params(&[Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert_eq!(
            p,
            [1, 1, 2, 1, 2, 3].map(Value::Int).to_vec(),
            "placeholders are filled in the order they appear"
        );
    }

    #[test]
    fn no_primary_key_is_one_chunk() {
        let t = shape(&[], &[("x", true)]);
        assert!(!t.checksum_query(false, false).contains("FORCE INDEX"));
        let c = Chunk {
            index: 0,
            lower: None,
            upper: None,
        };
        assert_eq!(c.describe(&t), "whole table (no primary key)");
    }

    #[test]
    fn chunk_descriptions() {
        let t = shape(&["id"], &[("id", false)]);
        let cases = [
            (None, Some(vec![Value::Int(1000)]), "id in (-inf, 1000]"),
            (
                Some(vec![Value::Bytes(b"1000".to_vec())]),
                Some(vec![Value::Bytes(b"2000".to_vec())]),
                "id in (1000, 2000]",
            ),
            (
                Some(vec![Value::Bytes(b"k'x".to_vec())]),
                None,
                "id in ('k''x', +inf]",
            ),
        ];
        for (lower, upper, want) in cases {
            let c = Chunk {
                index: 1,
                lower,
                upper,
            };
            assert_eq!(c.describe(&t), want);
        }
        let t2 = shape(&["a", "b"], &[]);
        let c = Chunk {
            index: 0,
            lower: Some(vec![Value::Int(1), Value::Bytes(vec![0xff])]),
            upper: None,
        };
        assert_eq!(c.describe(&t2), "(a, b) in ((1, 0xff), +inf]");
    }
}
