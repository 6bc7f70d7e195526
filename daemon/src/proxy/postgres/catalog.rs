//! Column names for masking: RowDescription carries a table OID and a
//! column number, the masking rules speak of `schema.table.column`. This
//! cache, shared by all sessions on one (resource, database), maps the one
//! to the other, asking the database's catalog over a separate connection
//! (logged in with the same vaulted role) when it meets an unknown table.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt as _;

use super::{
    upstream::{read_message, Stream, UpstreamError},
    wire::Reader,
};

/// One column's name, lower-case as the catalog stores unquoted names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnName {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnName {
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// Columns of one table by attnum (index attnum-1; dropped columns None).
pub type TableColumns = Arc<Vec<Option<ColumnName>>>;

/// Caches per (resource, database).
#[derive(Default)]
pub struct Catalogs {
    caches: Mutex<HashMap<(String, String), Arc<Catalog>>>,
}

impl Catalogs {
    pub fn for_db(&self, resource: &str, database: &str) -> Arc<Catalog> {
        let mut map = match self.caches.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry((resource.to_owned(), database.to_owned()))
            .or_default()
            .clone()
    }
}

/// The cache for one database.
#[derive(Default)]
pub struct Catalog {
    tables: Mutex<HashMap<u32, TableColumns>>,
    /// Bumped by every invalidation, so plans built from older names can
    /// tell they are stale.
    generation: std::sync::atomic::AtomicU64,
}

impl Catalog {
    pub fn cached(&self, oid: u32) -> Option<TableColumns> {
        self.tables.lock().ok()?.get(&oid).cloned()
    }

    /// Forgets everything (after DDL went through: names may have changed).
    pub fn invalidate(&self) {
        if let Ok(mut t) = self.tables.lock() {
            t.clear();
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn insert(&self, oid: u32, cols: TableColumns) {
        if let Ok(mut t) = self.tables.lock() {
            // Bounded: a database with more tables than this just asks again.
            if t.len() > 100_000 {
                t.clear();
            }
            t.insert(oid, cols);
        }
    }
}

/// Runs one catalog query on `conn` and returns its rows (text format).
pub async fn query(
    conn: &mut Stream,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out)?;
    conn.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        let msg = read_message(conn.as_mut(), &mut buf).await?;
        match msg.tag {
            b'D' => {
                let mut r = Reader::new(&msg);
                let n = r.i16()?;
                let mut row = Vec::new();
                for _ in 0..n {
                    row.push(r.value()?.map(|v| String::from_utf8_lossy(v).into_owned()));
                }
                rows.push(row);
            }
            b'E' => {
                let fields = super::wire::fields(&msg).unwrap_or_default();
                let get = |c: u8| {
                    fields
                        .iter()
                        .find(|(k, _)| *k == c)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                failure = Some(UpstreamError::Refused {
                    sqlstate: get(b'C'),
                    message: get(b'M'),
                });
            }
            b'Z' => {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(rows),
                }
            }
            _ => {}
        }
    }
}

/// Loads the columns of the given tables into the cache.
pub async fn load_tables(
    catalog: &Catalog,
    conn: &mut Stream,
    oids: &[u32],
) -> Result<(), UpstreamError> {
    if oids.is_empty() {
        return Ok(());
    }
    let list = oids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT a.attrelid::int8, a.attnum, n.nspname, c.relname, a.attname, a.attisdropped \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attrelid IN ({list}) AND a.attnum > 0 ORDER BY 1, 2"
    );
    let rows = query(conn, &sql).await?;
    let mut tables: HashMap<u32, Vec<Option<ColumnName>>> =
        oids.iter().map(|&o| (o, Vec::new())).collect();
    for row in rows {
        let mut it = row.into_iter();
        let (
            Some(Some(oid)),
            Some(Some(attnum)),
            Some(Some(schema)),
            Some(Some(table)),
            Some(Some(column)),
            Some(Some(dropped)),
        ) = (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        )
        else {
            continue;
        };
        let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<usize>()) else {
            continue;
        };
        let Some(cols) = tables.get_mut(&oid) else {
            continue;
        };
        if cols.len() < attnum {
            cols.resize(attnum, None);
        }
        if let Some(slot) = cols.get_mut(attnum - 1) {
            *slot = (dropped != "t").then_some(ColumnName {
                schema,
                table,
                column,
            });
        }
    }
    for (oid, cols) in tables {
        catalog.insert(oid, Arc::new(cols));
    }
    Ok(())
}

/// The columns of a table named in a COPY, in table order: (oid, names).
pub async fn table_columns(
    conn: &mut Stream,
    schema: &str,
    table: &str,
) -> Result<Vec<ColumnName>, UpstreamError> {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql = format!(
        "SELECT n.nspname, c.relname, a.attname \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = {} AND c.relname = {} AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
        lit(schema),
        lit(table)
    );
    let rows = query(conn, &sql).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let mut it = row.into_iter();
            Some(ColumnName {
                schema: it.next()??,
                table: it.next()??,
                column: it.next()??,
            })
        })
        .collect())
}
