//! Built-in denials that apply before any rule of any policy: functions that reach outside the
//! database or run SQL the policy cannot see, and settings that change who the session is or how
//! its SQL is read. A policy opts out by name with `allow_functions` / `allow_settings`.

use sqlparser::ast::{Expr, Value};

/// Functions denied by exact name (the last part of the name, as PostgreSQL resolves it:
/// unquoted lower-cased, quoted as written; any schema qualification), with the reason.
const DENIED_FUNCTIONS: &[(&str, &str)] = &[
    // Server files.
    ("pg_read_file", "it reads files on the database server"),
    (
        "pg_read_binary_file",
        "it reads files on the database server",
    ),
    ("pg_stat_file", "it inspects files on the database server"),
    ("lo_import", "it reads a file on the database server"),
    ("lo_export", "it writes a file on the database server"),
    ("pg_logdir_ls", "it lists server directories"),
    // SQL text executed by the function itself, invisible to the policy.
    ("query_to_xml", "it runs SQL text the policy cannot check"),
    (
        "query_to_xml_and_xmlschema",
        "it runs SQL text the policy cannot check",
    ),
    (
        "query_to_xmlschema",
        "it runs SQL text the policy cannot check",
    ),
    ("ts_stat", "it runs SQL text the policy cannot check"),
    ("ts_rewrite", "it can run SQL text the policy cannot check"),
    // Whole tables/schemas/databases dumped by name, past table rules and column masking.
    (
        "table_to_xml",
        "it dumps a table past the policy and masking",
    ),
    (
        "table_to_xml_and_xmlschema",
        "it dumps a table past the policy and masking",
    ),
    (
        "schema_to_xml",
        "it dumps a schema past the policy and masking",
    ),
    (
        "schema_to_xml_and_xmlschema",
        "it dumps a schema past the policy and masking",
    ),
    (
        "database_to_xml",
        "it dumps the database past the policy and masking",
    ),
    (
        "database_to_xml_and_xmlschema",
        "it dumps the database past the policy and masking",
    ),
    // Other sessions and the server itself.
    ("pg_terminate_backend", "it ends other sessions"),
    ("pg_cancel_backend", "it cancels other sessions' queries"),
    ("pg_reload_conf", "it reloads the server configuration"),
    ("pg_rotate_logfile", "it administers the server"),
    ("pg_promote", "it promotes a standby server"),
    ("pg_switch_wal", "it administers the server"),
    ("pg_create_restore_point", "it administers the server"),
    ("pg_backup_start", "it administers the server"),
    ("pg_backup_stop", "it administers the server"),
    ("pg_start_backup", "it administers the server"),
    ("pg_stop_backup", "it administers the server"),
    ("pg_wal_replay_pause", "it administers the server"),
    ("pg_wal_replay_resume", "it administers the server"),
    (
        "pg_log_backend_memory_contexts",
        "it administers the server",
    ),
    ("pg_import_system_collations", "it administers the server"),
    (
        "pg_show_all_file_settings",
        "it reads the server's configuration files",
    ),
    (
        "pg_hba_file_rules",
        "it reads the server's authentication configuration",
    ),
    (
        "pg_ident_file_mappings",
        "it reads the server's authentication configuration",
    ),
    // Replication: raw change streams bypass every table rule and masking.
    (
        "pg_create_physical_replication_slot",
        "it manages replication",
    ),
    (
        "pg_create_logical_replication_slot",
        "it manages replication",
    ),
    ("pg_drop_replication_slot", "it manages replication"),
    ("pg_replication_slot_advance", "it manages replication"),
    (
        "pg_copy_physical_replication_slot",
        "it manages replication",
    ),
    ("pg_copy_logical_replication_slot", "it manages replication"),
    (
        "pg_logical_emit_message",
        "it writes to the replication stream",
    ),
];

/// Functions denied by name prefix.
const DENIED_FUNCTION_PREFIXES: &[(&str, &str)] = &[
    ("pg_ls_", "it lists server directories"),
    (
        "pg_file_",
        "it writes or removes files on the database server",
    ),
    (
        "dblink",
        "it connects from the database server to other servers",
    ),
    (
        "pg_logical_slot_",
        "it reads raw data changes past the policy and masking",
    ),
    ("pg_replication_origin_", "it manages replication"),
    ("binary_upgrade_", "it is an internal upgrade function"),
];

/// Why `name` (normalized) is a denied function, if it is.
pub(super) fn dangerous_function(name: &str) -> Option<&'static str> {
    DENIED_FUNCTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| {
            DENIED_FUNCTION_PREFIXES
                .iter()
                .find(|(p, _)| name.starts_with(p))
        })
        .map(|(_, why)| *why)
}

/// Settings that no SET / set_config() may change (names lower-case; PostgreSQL looks settings
/// up case-insensitively, quoted or not):
/// - who the session is: `role`, `session_authorization` (also the SET ROLE / SET SESSION
///   AUTHORIZATION statements);
/// - integrity and catalog protections: `session_replication_role` (disables triggers and
///   foreign keys), `allow_system_table_mods`, `lo_compat_privileges`, `zero_damaged_pages`,
///   `ignore_system_indexes`, `ignore_checksum_failure`, `ignore_invalid_pages`,
///   `allow_in_place_tablespaces`, `event_triggers`, `createrole_self_grant`,
///   `restrict_nonsystem_relation_kind`;
/// - code loading: `local_preload_libraries`, `session_preload_libraries`,
///   `shared_preload_libraries`, `dynamic_library_path`, `jit_provider`;
/// - how SQL text is lexed (the policy reads it the standard way): `backslash_quote`;
/// - every `log_*` setting (hiding the session's activity from the server log).
///
/// Further rules in [`setting_problem`]: `search_path` only to `public` / `pg_catalog` (table
/// rules treat unqualified names as `public.`), `client_encoding` / SET NAMES only to UTF8,
/// `standard_conforming_strings`, `default_transaction_read_only`, `transaction_read_only` and
/// `row_security` only to `on`, and no custom `prefix.name` settings (row-level-security
/// policies commonly read their tenant or user from one). RESET returns a setting to the
/// configured default and is allowed, except for custom settings.
const DENIED_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "session_replication_role",
    "allow_system_table_mods",
    "lo_compat_privileges",
    "zero_damaged_pages",
    "ignore_system_indexes",
    "ignore_checksum_failure",
    "ignore_invalid_pages",
    "allow_in_place_tablespaces",
    "event_triggers",
    "createrole_self_grant",
    "restrict_nonsystem_relation_kind",
    "local_preload_libraries",
    "session_preload_libraries",
    "shared_preload_libraries",
    "dynamic_library_path",
    "jit_provider",
    "backslash_quote",
];

/// Settings that may only be turned on.
const ON_ONLY_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "default_transaction_read_only",
    "transaction_read_only",
    "row_security",
];

/// The new value of a setting, as far as it can be known.
#[derive(Debug, Clone, Copy)]
pub(super) enum NewValue<'a> {
    /// `SET name TO v1, v2` / `SET name = ...`.
    Exprs(&'a [Expr]),
    /// `set_config(name, value, ...)`: the value if it is a string literal.
    Text(Option<&'a str>),
    /// `RESET name`.
    Reset,
}

/// Why changing setting `name` (lower-case) to `value` is denied, if it is.
pub(super) fn setting_problem(name: &str, value: NewValue<'_>) -> Option<&'static str> {
    if name.contains('.') {
        return Some("custom settings can carry identity for row-level security");
    }
    if matches!(value, NewValue::Reset) {
        return None;
    }
    if DENIED_SETTINGS.contains(&name) {
        return Some(match name {
            "role" | "session_authorization" => "it changes the role the session acts as",
            "backslash_quote" => "it changes how SQL text is read",
            n if n.ends_with("libraries") || n == "dynamic_library_path" || n == "jit_provider" => {
                "it loads code into the server"
            }
            _ => "it weakens the database's integrity or security checks",
        });
    }
    if name.starts_with("log_") {
        return Some("it changes what the server logs about the session");
    }
    let words = match value_words(value) {
        Some(words) => words,
        None => {
            return match name {
                "search_path" | "client_encoding" => {
                    Some("its new value is not a plain literal the policy can check")
                }
                n if ON_ONLY_SETTINGS.contains(&n) => {
                    Some("its new value is not a plain literal the policy can check")
                }
                _ => None,
            }
        }
    };
    match name {
        "search_path" => {
            let ok = words
                .iter()
                .all(|w| w.is_empty() || w == "public" || w == "pg_catalog" || w == "default");
            (!ok).then_some(
                "table rules resolve unqualified names in schema public; only public and pg_catalog may be searched",
            )
        }
        "client_encoding" => {
            let ok = words
                .iter()
                .all(|w| matches!(w.as_str(), "utf8" | "utf-8" | "unicode" | "default"));
            (!ok).then_some("the policy reads SQL text as UTF-8; other client encodings are denied")
        }
        n if ON_ONLY_SETTINGS.contains(&n) => {
            let ok = words
                .iter()
                .all(|w| matches!(w.as_str(), "on" | "true" | "1" | "yes" | "default"));
            (!ok).then_some("it may only be turned on")
        }
        _ => None,
    }
}

/// The words of a new value, lower-cased and split at commas (`'a, b'` is two words);
/// None if some part is not a plain literal or name.
fn value_words(value: NewValue<'_>) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut add = |text: &str| {
        for w in text.split(',') {
            let w = w.trim();
            // A quoted name is taken as written ("Public" and "public " name
            // other schemas than public); a bare one folds to lower case.
            words.push(
                match w.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                    Some(quoted) => quoted.to_owned(),
                    None => w.to_ascii_lowercase(),
                },
            );
        }
    };
    match value {
        NewValue::Reset => {}
        NewValue::Text(text) => add(text?),
        NewValue::Exprs(exprs) => {
            for e in exprs {
                match e {
                    Expr::Identifier(id) => add(&id.value),
                    Expr::Value(v) => match &v.value {
                        Value::Boolean(b) => add(if *b { "true" } else { "false" }),
                        Value::Number(n, _) => add(n),
                        other => add(literal_text(other)?),
                    },
                    _ => return None,
                }
            }
        }
    }
    Some(words)
}

/// The text of a string literal of any quoting.
pub(super) fn literal_text(v: &Value) -> Option<&str> {
    match v {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s)
        | Value::DoubleQuotedString(s) => Some(s),
        Value::DollarQuotedString(d) => Some(&d.value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_function_table() {
        let cases: &[(&str, bool)] = &[
            ("pg_read_file", true),
            ("pg_read_binary_file", true),
            ("pg_ls_dir", true),
            ("pg_ls_waldir", true),
            ("dblink", true),
            ("dblink_exec", true),
            ("lo_import", true),
            ("lo_export", true),
            ("query_to_xml", true),
            ("pg_terminate_backend", true),
            ("pg_logical_slot_get_changes", true),
            ("PG_READ_FILE", false),
            ("pg_read_filex", false),
            ("lower", false),
            ("pg_sleep", false),
            ("lo_get", false),
            ("current_setting", false),
        ];
        for (name, want) in cases {
            assert_eq!(dangerous_function(name).is_some(), *want, "{name}");
        }
    }

    #[test]
    fn setting_table() {
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("role", Some("postgres"), true),
            ("session_authorization", Some("x"), true),
            ("session_replication_role", Some("replica"), true),
            ("log_statement", Some("none"), true),
            ("app.tenant", Some("1"), true),
            ("search_path", Some("public"), false),
            ("search_path", Some("public, pg_catalog"), false),
            ("search_path", Some(""), false),
            ("search_path", Some("secret, public"), true),
            ("search_path", Some("\"public\", pg_catalog"), false),
            ("search_path", Some("\"Public\""), true),
            ("search_path", Some("\"public \""), true),
            ("search_path", Some("PUBLIC"), false),
            ("search_path", Some("\"$user\", public"), true),
            ("search_path", None, true),
            ("client_encoding", Some("UTF8"), false),
            ("client_encoding", Some("SJIS"), true),
            ("standard_conforming_strings", Some("on"), false),
            ("standard_conforming_strings", Some("off"), true),
            ("default_transaction_read_only", Some("off"), true),
            ("statement_timeout", Some("5s"), false),
            ("timezone", None, false),
            ("work_mem", Some("64MB"), false),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                setting_problem(name, NewValue::Text(*value)).is_some(),
                *want,
                "{name} = {value:?}"
            );
        }
        assert!(setting_problem("role", NewValue::Reset).is_none());
        assert!(setting_problem("app.tenant", NewValue::Reset).is_some());
    }
}
