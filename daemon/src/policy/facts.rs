//! What one parsed statement means for the rules — its kinds, the tables and functions it
//! touches anywhere, its COPY target — and the built-in denials found on the way. One read-only
//! pass of a sqlparser `Visitor` (stack-safe: sqlparser grows the stack on the heap when deep).

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
};

use sqlparser::{
    ast::{
        CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable, FunctionArg,
        FunctionArgExpr, FunctionArguments, ObjectName, ObjectType, Query, Reset, Select, Set,
        SetExpr, Statement, TableFactor, UtilityOption, Value, Visit, Visitor,
    },
    keywords::Keyword,
};

use super::{
    builtin::{self, NewValue},
    last_name, norm_ident, table_names, CopyFormat, CopyOut, Kind, Options,
};

/// One kind a statement has, with the fact `without_where` rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Part {
    pub kind: Kind,
    /// UPDATE/DELETE (or TRUNCATE) that affects every row: no WHERE, or a WHERE without any
    /// column reference (`WHERE true`, `WHERE 1 = 1`).
    pub without_where: bool,
}

/// A built-in denial: `builtin/<rule>` and the sentence after `builtin rule <rule>: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Builtin {
    pub rule: &'static str,
    pub reason: String,
}

#[derive(Debug)]
pub(super) struct Facts {
    /// The kind of the statement as written (what the audit shows).
    pub primary: Kind,
    /// Every kind inside it: the statement itself, data-modifying CTEs, what EXPLAIN ANALYZE
    /// and PREPARE run, SELECT INTO (ddl), COPY FROM (insert) / TO (select).
    pub parts: Vec<Part>,
    /// `schema.table`, normalized, deduplicated, in order of appearance.
    pub tables: Vec<String>,
    /// Called functions (last name part, normalized), deduplicated.
    pub functions: Vec<String>,
    pub copy_out: Option<CopyOut>,
    pub denial: Option<Builtin>,
}

/// The first two keywords of a statement's text, for kinds sqlparser has many variants for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lead {
    pub first: Keyword,
    pub second: Keyword,
}

pub(super) fn gather(stmt: &Statement, lead: Lead, options: &Options) -> Facts {
    let mut g = Gather {
        options,
        facts: Facts {
            primary: primary_kind(stmt, Some(lead)),
            parts: Vec::new(),
            tables: Vec::new(),
            functions: Vec::new(),
            copy_out: None,
            denial: None,
        },
        lead: Some(lead),
        no_exec: Vec::new(),
        scopes: Vec::new(),
        skip_relations: Vec::new(),
        dml_targets: HashSet::new(),
        seen_functions: HashSet::new(),
    };
    let _ = stmt.visit(&mut g);
    let mut facts = g.facts;
    dedup(&mut facts.tables);
    facts
}

/// A statement of a kind the policy does not parse (DO).
pub(super) fn opaque(kind: Kind) -> Facts {
    Facts {
        primary: kind,
        parts: vec![Part {
            kind,
            without_where: false,
        }],
        tables: Vec::new(),
        functions: Vec::new(),
        copy_out: None,
        denial: None,
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen: HashSet<String> = HashSet::with_capacity(v.len());
    v.retain(|x| seen.insert(x.clone()));
}

struct Gather<'o> {
    options: &'o Options,
    facts: Facts,
    /// Only the outermost statement is classified with its leading keywords.
    lead: Option<Lead>,
    /// EXPLAIN statements without ANALYZE being visited: what they contain does not run.
    no_exec: Vec<*const Statement>,
    /// WITH scopes, innermost last, to tell a CTE reference from a table.
    scopes: Vec<Scope>,
    /// Names the relation hook must not record as tables (function calls in FROM, CTE refs).
    skip_relations: Vec<*const ObjectName>,
    /// UPDATE / DELETE / MERGE targets: always real tables, even if a CTE has the same name.
    dml_targets: HashSet<*const TableFactor>,
    /// Functions already recorded.
    seen_functions: HashSet<String>,
}

#[derive(Debug)]
struct Scope {
    query: *const Query,
    /// CTE name -> its first position in the WITH list.
    names: HashMap<String, usize>,
    /// CTE body -> its position.
    bodies: HashMap<*const Query, usize>,
    recursive: bool,
    /// How many CTEs are visible right now: while CTE i's body is visited, only the ones
    /// before it (and itself, if RECURSIVE); afterwards all of them.
    visible: usize,
}

impl Gather<'_> {
    fn deny(&mut self, rule: &'static str, reason: String) -> ControlFlow<()> {
        self.facts.denial = Some(Builtin { rule, reason });
        ControlFlow::Break(())
    }

    fn part(&mut self, kind: Kind, without_where: bool) {
        if self.no_exec.is_empty() {
            let p = Part {
                kind,
                without_where,
            };
            if !self.facts.parts.contains(&p) {
                self.facts.parts.push(p);
            }
        }
    }

    fn table(&mut self, name: &ObjectName) {
        table_names(name, &mut self.facts.tables);
    }

    fn is_cte_reference(&self, name: &ObjectName) -> bool {
        let [part] = name.0.as_slice() else {
            return false;
        };
        let Some(ident) = part.as_ident() else {
            return false;
        };
        let n = norm_ident(ident);
        self.scopes
            .iter()
            .rev()
            .any(|s| s.names.get(&n).is_some_and(|i| *i < s.visible))
    }

    /// A function call: recorded for `functions` rules, checked against the built-in list.
    fn function(&mut self, name: &ObjectName, args: Option<&[FunctionArg]>) -> ControlFlow<()> {
        let n = last_name(name);
        if self.seen_functions.insert(n.clone()) {
            self.facts.functions.push(n.clone());
        }
        if self.options.allow_functions.contains(&n) {
            return ControlFlow::Continue(());
        }
        if let Some(why) = builtin::dangerous_function(&n) {
            return self.deny("dangerous-function", format!("{n}() is denied: {why}"));
        }
        if n == "set_config" {
            let arg = |i: usize| -> Option<&Expr> {
                match args?.get(i)? {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                    | FunctionArg::Named {
                        arg: FunctionArgExpr::Expr(e),
                        ..
                    } => Some(e),
                    _ => None,
                }
            };
            let literal = |e: Option<&Expr>| -> Option<String> {
                match e? {
                    Expr::Value(v) => builtin::literal_text(&v.value).map(str::to_owned),
                    _ => None,
                }
            };
            let Some(setting) = literal(arg(0)) else {
                return self.deny(
                    "security-setting",
                    "set_config() is denied when the setting name is not a string literal".into(),
                );
            };
            let value = literal(arg(1));
            return self.setting(
                &setting.to_ascii_lowercase(),
                NewValue::Text(value.as_deref()),
            );
        }
        ControlFlow::Continue(())
    }

    fn setting(&mut self, name: &str, value: NewValue<'_>) -> ControlFlow<()> {
        if self.options.allow_settings.iter().any(|s| s == name) {
            return ControlFlow::Continue(());
        }
        match builtin::setting_problem(name, value) {
            Some(why) => {
                let verb = if matches!(value, NewValue::Reset) {
                    "resetting"
                } else {
                    "changing"
                };
                self.deny(
                    "security-setting",
                    format!("{verb} setting {name} is denied: {why}"),
                )
            }
            None => ControlFlow::Continue(()),
        }
    }

    fn statement(&mut self, s: &Statement) -> ControlFlow<()> {
        let lead = self.lead.take();
        match s {
            Statement::Query(q) => {
                if !matches!(
                    *q.body,
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                ) {
                    self.part(Kind::Select, false);
                }
            }
            Statement::Insert(_) => self.part(Kind::Insert, false),
            Statement::Update(u) => {
                self.dml_targets.insert(&u.table.relation);
                self.part(Kind::Update, without_where(u.selection.as_ref()));
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
                };
                for t in from {
                    self.dml_targets.insert(&t.relation);
                }
                for t in &d.tables {
                    self.table(t);
                }
                self.part(Kind::Delete, without_where(d.selection.as_ref()));
            }
            Statement::Merge(m) => {
                self.dml_targets.insert(&m.table);
                self.part(Kind::Merge, false);
            }
            Statement::Truncate(_) => self.part(Kind::Delete, true),
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => {
                match target {
                    CopyTarget::Program { .. } => {
                        return self.deny(
                            "copy-program",
                            "COPY ... PROGRAM runs a command on the database server and is denied"
                                .into(),
                        )
                    }
                    CopyTarget::File { .. } => {
                        return self.deny(
                            "copy-server-file",
                            "COPY to or from a file on the database server is denied; use COPY ... TO STDOUT or FROM STDIN".into(),
                        )
                    }
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
                self.part(Kind::Copy, false);
                self.part(if *to { Kind::Select } else { Kind::Insert }, false);
                if let CopySource::Table { table_name, .. } = source {
                    self.table(table_name);
                }
                if *to && matches!(target, CopyTarget::Stdout) && self.facts.copy_out.is_none() {
                    self.facts.copy_out = Some(copy_out(source, options, legacy_options));
                }
            }
            Statement::Set(set) => {
                self.part(
                    if matches!(set, Set::SetTransaction { .. }) {
                        Kind::Transaction
                    } else {
                        Kind::Set
                    },
                    false,
                );
                return self.set(set);
            }
            Statement::Reset(r) => {
                self.part(Kind::Set, false);
                match &r.reset {
                    Reset::ALL | Reset::SessionAuthorization => {}
                    Reset::ConfigurationParameter(name) => {
                        return self.setting(&setting_name(name), NewValue::Reset)
                    }
                }
            }
            Statement::Load { .. } | Statement::LoadData { .. } => {
                self.part(Kind::Other, false);
                return self.deny(
                    "load",
                    "LOAD is denied: it loads a shared library into the server".into(),
                );
            }
            Statement::Directory { .. } | Statement::Unload { .. } => {
                self.part(Kind::Other, false);
                return self.deny(
                    "copy-server-file",
                    "writing query results to server-side files or storage is denied".into(),
                );
            }
            Statement::Call(f) => {
                self.part(Kind::Call, false);
                let args = match &f.args {
                    FunctionArguments::List(l) => Some(l.args.as_slice()),
                    _ => None,
                };
                return self.function(&f.name, args);
            }
            Statement::Explain {
                analyze, options, ..
            } => {
                self.part(Kind::Explain, false);
                if !explain_runs(*analyze, options.as_deref()) {
                    self.no_exec.push(s);
                }
            }
            Statement::Drop {
                object_type:
                    ObjectType::Table
                    | ObjectType::View
                    | ObjectType::MaterializedView
                    | ObjectType::Sequence,
                names,
                ..
            } => {
                for n in names {
                    self.table(n);
                }
                self.part(Kind::Ddl, false);
            }
            Statement::Vacuum(v) => {
                if let Some(t) = &v.table_name {
                    self.table(t);
                }
                self.part(Kind::Vacuum, false);
            }
            other => self.part(primary_kind(other, lead), false),
        }
        ControlFlow::Continue(())
    }

    fn set(&mut self, set: &Set) -> ControlFlow<()> {
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => self.setting(&setting_name(variable), NewValue::Exprs(values)),
            Set::ParenthesizedAssignments { variables, .. } => {
                for v in variables {
                    self.setting(&setting_name(v), NewValue::Exprs(&[]))?;
                }
                ControlFlow::Continue(())
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    self.setting(
                        &setting_name(&a.name),
                        NewValue::Exprs(std::slice::from_ref(&a.value)),
                    )?;
                }
                ControlFlow::Continue(())
            }
            Set::SetSessionAuthorization(_) => {
                self.setting("session_authorization", NewValue::Text(None))
            }
            // SET ROLE NONE returns to the session user.
            Set::SetRole {
                role_name: None, ..
            } => ControlFlow::Continue(()),
            Set::SetRole { .. } => self.setting("role", NewValue::Text(None)),
            Set::SetNames { charset_name, .. } => {
                self.setting("client_encoding", NewValue::Text(Some(&charset_name.value)))
            }
            Set::SetTimeZone { .. }
            | Set::SetNamesDefault {}
            | Set::SetTransaction { .. }
            | Set::SetSessionParam(_) => ControlFlow::Continue(()),
        }
    }
}

impl Visitor for Gather<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        self.statement(s)
    }

    fn post_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if self.no_exec.last().is_some_and(|p| std::ptr::eq(*p, s)) {
            self.no_exec.pop();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        // `TABLE name` (SetExpr::Table): sqlparser keeps only the bare strings and consumes
        // tokens after the name it does not use, so what it saw may not be what runs.
        let mut bodies: Vec<&SetExpr> = vec![&q.body];
        while let Some(b) = bodies.pop() {
            match b {
                SetExpr::SetOperation { left, right, .. } => {
                    bodies.push(left);
                    bodies.push(right);
                }
                SetExpr::Table(_) => {
                    return self.deny(
                        "parse-error",
                        "the TABLE <name> shorthand is not supported; write SELECT * FROM <name>"
                            .into(),
                    )
                }
                _ => {}
            }
        }
        if let Some(parent) = self.scopes.last_mut() {
            if let Some(i) = parent.bodies.get(&(q as *const Query)) {
                parent.visible = if parent.recursive { i + 1 } else { *i };
            }
        }
        let mut scope = Scope {
            query: q,
            names: HashMap::new(),
            bodies: HashMap::new(),
            recursive: q.with.as_ref().is_some_and(|w| w.recursive),
            visible: 0,
        };
        for (i, c) in q.with.iter().flat_map(|w| &w.cte_tables).enumerate() {
            scope.names.entry(norm_ident(&c.alias.name)).or_insert(i);
            scope.bodies.insert(&*c.query, i);
        }
        self.scopes.push(scope);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.scopes.last().is_some_and(|s| std::ptr::eq(s.query, q)) {
            self.scopes.pop();
        }
        if let Some(parent) = self.scopes.last_mut() {
            if parent.bodies.contains_key(&(q as *const Query)) {
                parent.visible = parent.bodies.len();
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if let Some(into) = &s.into {
            // SELECT ... INTO creates a table.
            self.part(Kind::Ddl, false);
            for t in &into.targets {
                match t {
                    Expr::Identifier(id) => {
                        self.table(&ObjectName::from(vec![id.clone()]));
                    }
                    Expr::CompoundIdentifier(ids) => {
                        self.table(&ObjectName::from(ids.clone()));
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => {
                self.skip_relations.push(name);
                self.function(name, Some(&args.args))
            }
            TableFactor::Table { name, .. } => {
                let target = self.dml_targets.contains(&(tf as *const TableFactor));
                if !target && self.is_cte_reference(name) {
                    self.skip_relations.push(name);
                }
                ControlFlow::Continue(())
            }
            TableFactor::Function { name, args, .. } => self.function(name, Some(args)),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        if let Some(i) = self.skip_relations.iter().position(|p| std::ptr::eq(*p, r)) {
            self.skip_relations.swap_remove(i);
        } else {
            self.table(r);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let args = match &f.args {
                FunctionArguments::List(l) => Some(l.args.as_slice()),
                _ => None,
            };
            return self.function(&f.name, args);
        }
        ControlFlow::Continue(())
    }
}

/// Setting names are case-insensitive in PostgreSQL, quoted or not.
fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(id) => id.value.to_ascii_lowercase(),
            None => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// EXPLAIN runs the statement with ANALYZE, written either way: `EXPLAIN ANALYZE` or
/// `EXPLAIN (ANALYZE [true|on|1])`. Anything but an explicit false counts as running.
fn explain_runs(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    analyze
        || options.unwrap_or_default().iter().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && !matches!(&o.arg, Some(Expr::Value(v)) if is_false(&v.value))
                && !matches!(&o.arg, Some(Expr::Identifier(id)) if id.value.eq_ignore_ascii_case("off") || id.value.eq_ignore_ascii_case("false"))
        })
}

fn is_false(v: &Value) -> bool {
    match v {
        Value::Boolean(b) => !b,
        Value::Number(n, _) => n == "0",
        other => builtin::literal_text(other).is_some_and(|t| {
            matches!(
                t.to_ascii_lowercase().as_str(),
                "off" | "false" | "0" | "no"
            )
        }),
    }
}

/// No WHERE, or one that references no column at all.
fn without_where(selection: Option<&Expr>) -> bool {
    struct Columns;
    impl Visitor for Columns {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    match selection {
        None => true,
        Some(e) => e.visit(&mut Columns).is_continue(),
    }
}

fn copy_out(source: &CopySource, options: &[CopyOption], legacy: &[CopyLegacyOption]) -> CopyOut {
    let mut format = CopyFormat::Text;
    for o in options {
        if let CopyOption::Format(f) = o {
            format = match f.value.to_ascii_lowercase().as_str() {
                "text" => CopyFormat::Text,
                "csv" => CopyFormat::Csv,
                // binary, or something the server will refuse: never treat it as text.
                _ => CopyFormat::Binary,
            };
        }
    }
    // Options that change how values are framed or encoded: Cordon's COPY
    // reader splits rows the default way (tab, or comma and double quote),
    // so under these a field could line up with another column.
    let mut reframed = options.iter().any(|o| {
        !matches!(
            o,
            CopyOption::Format(_) | CopyOption::Header(_) | CopyOption::Freeze(_)
        )
    });
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Csv(csv) => {
                format = CopyFormat::Csv;
                reframed |= csv
                    .iter()
                    .any(|c| !matches!(c, sqlparser::ast::CopyLegacyCsvOption::Header));
            }
            _ => reframed = true,
        }
    }
    if reframed && format != CopyFormat::Binary {
        format = CopyFormat::Reframed;
    }
    match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            let mut names = Vec::new();
            table_names(table_name, &mut names);
            let full = names.first().cloned().unwrap_or_default();
            let (schema, table) = full.split_once('.').unwrap_or(("public", full.as_str()));
            CopyOut::Table {
                schema: schema.to_owned(),
                table: table.to_owned(),
                columns: columns.iter().map(norm_ident).collect(),
                format,
            }
        }
        CopySource::Query(_) => CopyOut::Query { format },
    }
}

/// The kind of one statement by itself (not what it contains).
pub(super) fn primary_kind(s: &Statement, lead: Option<Lead>) -> Kind {
    match s {
        Statement::Query(q) => match &*q.body {
            SetExpr::Insert(_) => Kind::Insert,
            SetExpr::Update(_) => Kind::Update,
            SetExpr::Delete(_) => Kind::Delete,
            SetExpr::Merge(_) => Kind::Merge,
            SetExpr::Select(s) if s.into.is_some() => Kind::Ddl,
            _ => Kind::Select,
        },
        Statement::Insert(_) => Kind::Insert,
        Statement::Update(_) => Kind::Update,
        Statement::Delete(_) | Statement::Truncate(_) => Kind::Delete,
        Statement::Merge(_) => Kind::Merge,
        Statement::Copy { .. } => Kind::Copy,
        Statement::Set(Set::SetTransaction { .. }) => Kind::Transaction,
        Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => Kind::Set,
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => Kind::Show,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Kind::Transaction,
        Statement::Call(_) => Kind::Call,
        Statement::Execute { .. } => Kind::Execute,
        Statement::Prepare { .. } | Statement::Deallocate { .. } => Kind::Prepare,
        Statement::Explain { .. } => Kind::Explain,
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } | Statement::NOTIFY { .. } => {
            Kind::Listen
        }
        Statement::Lock(_) | Statement::LockTables { .. } | Statement::UnlockTables => Kind::Lock,
        Statement::Vacuum(_) | Statement::Analyze(_) => Kind::Vacuum,
        // Cursors over a query that was itself checked.
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            Kind::Select
        }
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Deny(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::CreatePolicy(_)
        | Statement::AlterPolicy(_)
        | Statement::DropPolicy(_) => Kind::Dcl,
        Statement::Drop {
            object_type: ObjectType::Role | ObjectType::User,
            ..
        } => Kind::Dcl,
        Statement::Drop { .. }
        | Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::AlterTable(_)
        | Statement::CreateFunction(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateExtension(_)
        | Statement::Comment { .. } => Kind::Ddl,
        Statement::Load { .. } | Statement::LoadData { .. } => Kind::Other,
        _ => match lead {
            Some(lead) => kind_by_keywords(lead),
            // A statement nested in another one that is none of the above: take the strict view.
            None => Kind::Ddl,
        },
    }
}

fn kind_by_keywords(lead: Lead) -> Kind {
    use Keyword as K;
    match (lead.first, lead.second) {
        (K::GRANT | K::REVOKE | K::DENY, _) => Kind::Dcl,
        (K::CREATE | K::ALTER | K::DROP, K::ROLE | K::USER | K::GROUP | K::POLICY) => Kind::Dcl,
        (
            K::CREATE
            | K::ALTER
            | K::DROP
            | K::COMMENT
            | K::RENAME
            | K::TRUNCATE
            | K::REFRESH
            | K::MSCK
            | K::ATTACH
            | K::DETACH
            | K::INSTALL,
            _,
        ) => Kind::Ddl,
        (K::SHOW | K::DESCRIBE | K::DESC, _) => Kind::Show,
        (
            K::BEGIN
            | K::START
            | K::COMMIT
            | K::END
            | K::ROLLBACK
            | K::ABORT
            | K::SAVEPOINT
            | K::RELEASE,
            _,
        ) => Kind::Transaction,
        _ => Kind::Other,
    }
}
