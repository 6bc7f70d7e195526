//! Masked-expression guard, run when the policy has column masking rules. The proxy masks a
//! result column by its origin (table OID and column number in RowDescription) or, when there is
//! no origin, by its name. It cannot follow a masked column through an expression
//! (`upper(email)`, `email::text`, `string_agg(email, ',')`), a whole-row value (`SELECT u`,
//! `row_to_json(u)`, `to_json(u.*)`), a rename where PostgreSQL loses the origin (inside a
//! subquery, CTE, set operation or join), or a copy into another table (`INSERT … SELECT email`,
//! `UPDATE … SET x = email`, `CREATE TABLE AS`, `SELECT INTO`). Such statements are denied.
//!
//! Plain references are fine anywhere they keep the name: `SELECT email`, `SELECT *`, and at
//! the top level, reading straight from tables, `SELECT u.email AS e` (PostgreSQL reports the
//! origin). Predicates are not checked: WHERE / ORDER BY / GROUP BY / JOIN conditions and
//! EXISTS / IN subqueries can use a masked column as an oracle — a known, documented limit.
//! When in doubt the guard denies; it never needs the schema.

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
};

use sqlparser::ast::{
    Assignment, AssignmentTarget, CopySource, Delete, Expr, FromTable, FunctionArg,
    FunctionArgExpr, FunctionArguments, Insert, JoinConstraint, JoinOperator, Merge, MergeAction,
    MergeInsertKind, MergeUpdateKind, ObjectName, OnConflictAction, OnInsert, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, Update, UpdateTableFromKind, Values, Visit, Visitor,
};

use super::{last_name, name_parts, norm_ident, table_names};
use crate::masking::Rules;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Problem {
    #[error(
        "column {column} is masked, but the {place} reads it through an expression, which masking cannot follow; select the column itself"
    )]
    Expression { column: String, place: &'static str },
    #[error("{name} is a whole-row reference in the {place} and would expose masked columns; list the columns instead")]
    WholeRow { name: String, place: &'static str },
    #[error("`*` inside an expression, subquery or non-first branch of a set operation in the {place} can expose masked columns; list the columns instead")]
    Star { place: &'static str },
    #[error(
        "column {column} is masked, but it comes out as {alias} through a subquery, CTE, set operation or join where masking cannot follow it; keep the name {column}"
    )]
    Rename { column: String, alias: String },
    #[error("column {column} is masked, but this statement copies it into {target}, which is not masked")]
    Copy { column: String, target: String },
    #[error("`*` would copy masked columns into {target}; list the columns instead")]
    CopyStar { target: String },
    #[error("the column alias list of {relation} renames columns that may be masked; drop the column alias list")]
    ColumnAliases { relation: String },
    #[error("{function} with a payload that is not a literal would send column values to the client where masking cannot follow them (even from a WHERE clause); use a literal payload")]
    SideChannel { function: String },
}

/// Functions whose arguments reach the client outside the result rows
/// (NOTIFY payloads), whatever clause they sit in.
const SIDE_CHANNEL_FUNCTIONS: &[&str] = &["pg_notify"];

/// A call to a side-channel function with any argument that is not a
/// literal, anywhere in the statement (predicates included).
fn side_channel(stmt: &Statement) -> Option<Problem> {
    let mut found = None;
    let _ = sqlparser::ast::visit_expressions(stmt, |e| {
        if let Expr::Function(f) = e {
            let name = last_name(&f.name);
            if SIDE_CHANNEL_FUNCTIONS.contains(&name.as_str()) {
                let literal_only = match &f.args {
                    FunctionArguments::List(list) => list.args.iter().all(|a| {
                        matches!(
                            a,
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(_)))
                        )
                    }),
                    FunctionArguments::None => true,
                    FunctionArguments::Subquery(_) => false,
                };
                if !literal_only {
                    found = Some(Problem::SideChannel { function: name });
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    found
}

/// Checks one statement against the masking rules.
pub(super) fn check(stmt: &Statement, rules: &Rules) -> Result<(), Problem> {
    if let Some(problem) = side_channel(stmt) {
        return Err(problem);
    }
    let mut ctx = Ctx {
        rules,
        rows: Names::default(),
        ctes: Names::default(),
    };
    ctx.statement(stmt, Out::Client)
}

/// A stack of names with O(1) lookups (statements can list many thousands of relations).
#[derive(Debug, Default)]
struct Names {
    stack: Vec<String>,
    counts: HashMap<String, usize>,
}

impl Names {
    fn push(&mut self, name: String) {
        *self.counts.entry(name.clone()).or_default() += 1;
        self.stack.push(name);
    }

    fn len(&self) -> usize {
        self.stack.len()
    }

    fn truncate(&mut self, len: usize) {
        while self.stack.len() > len {
            let Some(name) = self.stack.pop() else { break };
            if let Some(c) = self.counts.get_mut(&name) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&name);
                }
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.counts.contains_key(name)
    }
}

/// Where the output of a query goes.
#[derive(Debug, Clone, Copy)]
enum Out<'s> {
    /// To the agent, masked by the proxy.
    Client,
    /// Into an enclosing query (derived table, CTE, DML in a CTE).
    Nested,
    /// Into a table (or a COPY stream the proxy cannot mask by column).
    Sink(&'s Sink),
}

#[derive(Debug)]
struct Sink {
    /// `(schema, table)`; None for COPY (query) TO STDOUT.
    target: Option<(String, String)>,
    /// Explicit target columns, by position.
    columns: Option<Vec<String>>,
    /// A new table whose columns take the output names (CREATE TABLE AS, SELECT INTO).
    by_output_name: bool,
}

impl Sink {
    fn label(&self, column: Option<&str>) -> String {
        match (&self.target, column) {
            (None, _) => "the COPY output".to_owned(),
            (Some((s, t)), Some(c)) => format!("{s}.{t}.{c}"),
            (Some((s, t)), None) => format!("{s}.{t}"),
        }
    }

    /// Ok if output position `j` (named `name`) lands in a masked column; Err(target label).
    fn check(&self, rules: &Rules, j: usize, name: Option<&str>) -> Result<(), String> {
        let column = match &self.columns {
            Some(cols) => cols.get(j).map(String::as_str),
            None if self.by_output_name => name,
            None => None,
        };
        match (&self.target, column) {
            (Some((s, t)), Some(c)) if rules.column_mode(s, t, c).is_some() => Ok(()),
            (_, c) => Err(self.label(c)),
        }
    }
}

/// Output names of the first branch of a set operation, which name its columns.
#[derive(Debug)]
struct Setop<'n> {
    names: &'n [Option<String>],
    leftmost: bool,
}

impl Setop<'_> {
    fn name(&self, j: usize) -> Option<&str> {
        self.names.get(j).and_then(|n| n.as_deref())
    }
}

/// What a scan of an expression found.
#[derive(Debug)]
enum Hit {
    Column(String),
    WholeRow(String),
    Star,
}

impl Hit {
    fn problem(self, place: &'static str) -> Problem {
        match self {
            Hit::Column(column) => Problem::Expression { column, place },
            Hit::WholeRow(name) => Problem::WholeRow { name, place },
            Hit::Star => Problem::Star { place },
        }
    }
}

struct Ctx<'r> {
    rules: &'r Rules,
    /// Relation names and aliases in scope (for whole-row references), innermost last.
    rows: Names,
    /// CTE names in scope.
    ctes: Names,
}

impl Ctx<'_> {
    fn masked(&self, name: &str) -> bool {
        self.rules.masks_column_named(name)
    }

    fn mentions<V: Visit + ?Sized>(&self, node: &V) -> Option<Hit> {
        scan(self.rules, &self.rows, node)
    }

    fn statement(&mut self, s: &Statement, out: Out<'_>) -> Result<(), Problem> {
        match s {
            Statement::Query(q) => self.query(q, out),
            Statement::Insert(i) => self.insert(i, out),
            Statement::Update(u) => self.update(u, out),
            Statement::Delete(d) => self.delete(d, out),
            Statement::Merge(m) => self.merge(m),
            Statement::CreateTable(ct) => match &ct.query {
                Some(q) => {
                    let sink = new_table_sink(&ct.name, ct.columns.iter().map(|c| &c.name));
                    self.query(q, Out::Sink(&sink))
                }
                None => Ok(()),
            },
            Statement::CreateView(cv) => {
                let sink = new_table_sink(&cv.name, cv.columns.iter().map(|c| &c.name));
                self.query(&cv.query, Out::Sink(&sink))
            }
            Statement::Copy {
                source: CopySource::Query(q),
                ..
            } => {
                let sink = Sink {
                    target: None,
                    columns: None,
                    by_output_name: false,
                };
                self.query(q, Out::Sink(&sink))
            }
            Statement::Explain { statement, .. } | Statement::Prepare { statement, .. } => {
                self.statement(statement, out)
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        self.query(q, Out::Client)?;
                    }
                }
                Ok(())
            }
            Statement::Call(f) => match self.mentions(f) {
                Some(hit) => Err(hit.problem("CALL arguments")),
                None => Ok(()),
            },
            Statement::Execute { parameters, .. } => match self.mentions(parameters) {
                Some(hit) => Err(hit.problem("EXECUTE parameters")),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn query(&mut self, q: &Query, out: Out<'_>) -> Result<(), Problem> {
        let (rows, ctes) = (self.rows.len(), self.ctes.len());
        let result = self.query_inner(q, out);
        self.rows.truncate(rows);
        self.ctes.truncate(ctes);
        result
    }

    fn query_inner(&mut self, q: &Query, out: Out<'_>) -> Result<(), Problem> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = norm_ident(&cte.alias.name);
                if with.recursive {
                    self.ctes.push(name.clone());
                }
                self.query(&cte.query, Out::Nested)?;
                if !cte.alias.columns.is_empty() && self.may_carry_masked(&cte.query) {
                    return Err(Problem::ColumnAliases { relation: name });
                }
                if !with.recursive {
                    self.ctes.push(name);
                }
            }
        }
        self.set_expr(&q.body, out)
    }

    fn set_expr(&mut self, body: &SetExpr, out: Out<'_>) -> Result<(), Problem> {
        match body {
            SetExpr::Select(s) => self.select(s, out, None),
            SetExpr::Query(q) => self.query(q, out),
            SetExpr::SetOperation { .. } => self.set_operation(body, out),
            SetExpr::Values(v) => self.values(v, out, None),
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.statement(s, out)
            }
            // Denied by the facts pass before this runs.
            SetExpr::Table(_) => Ok(()),
        }
    }

    fn set_operation(&mut self, body: &SetExpr, out: Out<'_>) -> Result<(), Problem> {
        // Leaves left to right, without recursion (chains are built iteratively by the parser).
        let mut leaves: Vec<&SetExpr> = Vec::new();
        let mut stack = vec![body];
        while let Some(b) = stack.pop() {
            match b {
                SetExpr::SetOperation { left, right, .. } => {
                    stack.push(right);
                    stack.push(left);
                }
                leaf => leaves.push(leaf),
            }
        }
        let names = leaves
            .first()
            .and_then(|l| leaf_select(l))
            .map(output_names)
            .unwrap_or_default();
        for (k, leaf) in leaves.into_iter().enumerate() {
            let setop = Setop {
                names: &names,
                leftmost: k == 0,
            };
            match (leaf_select(leaf), leaf) {
                (Some(s), _) => self.select(s, out, Some(&setop))?,
                (None, SetExpr::Values(v)) => self.values(v, out, Some(&setop))?,
                (None, SetExpr::Query(q)) => {
                    if self.may_carry_masked(q) {
                        return Err(Problem::Star {
                            place: "set operation",
                        });
                    }
                    self.query(q, Out::Nested)?;
                }
                (None, other) => self.set_expr(other, out)?,
            }
        }
        Ok(())
    }

    fn values(
        &mut self,
        v: &Values,
        out: Out<'_>,
        setop: Option<&Setop<'_>>,
    ) -> Result<(), Problem> {
        for row in &v.rows {
            for (j, e) in row.content.iter().enumerate() {
                let Some(hit) = self.mentions(e) else {
                    continue;
                };
                match (out, hit) {
                    (Out::Sink(sink), Hit::Column(column)) => {
                        let name = setop.and_then(|s| s.name(j));
                        sink.check(self.rules, j, name)
                            .map_err(|target| Problem::Copy { column, target })?;
                    }
                    (_, hit) => return Err(hit.problem("VALUES list")),
                }
            }
        }
        Ok(())
    }

    fn select(
        &mut self,
        s: &Select,
        out: Out<'_>,
        setop: Option<&Setop<'_>>,
    ) -> Result<(), Problem> {
        let rows = self.rows.len();
        let result = self.select_inner(s, out, setop);
        self.rows.truncate(rows);
        result
    }

    fn select_inner(
        &mut self,
        s: &Select,
        out: Out<'_>,
        setop: Option<&Setop<'_>>,
    ) -> Result<(), Problem> {
        // `plain`: every FROM item is a table, so PostgreSQL reports each column's origin.
        let mut plain = true;
        for twj in &s.from {
            self.table_with_joins(twj, &mut plain)?;
        }
        let into_sink;
        let out = match &s.into {
            Some(into) => {
                let target = match into.targets.first() {
                    Some(Expr::Identifier(id)) => {
                        Some(schema_table(&ObjectName::from(vec![id.clone()])))
                    }
                    Some(Expr::CompoundIdentifier(ids)) => {
                        Some(schema_table(&ObjectName::from(ids.clone())))
                    }
                    _ => None,
                };
                into_sink = Sink {
                    target,
                    columns: None,
                    by_output_name: true,
                };
                Out::Sink(&into_sink)
            }
            None => out,
        };
        for (j, item) in s.projection.iter().enumerate() {
            self.item(item, j, out, plain, setop, "select list")?;
        }
        Ok(())
    }

    fn item(
        &mut self,
        item: &SelectItem,
        j: usize,
        out: Out<'_>,
        plain: bool,
        setop: Option<&Setop<'_>>,
        place: &'static str,
    ) -> Result<(), Problem> {
        match item {
            SelectItem::Wildcard(_)
            | SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(_), _) => {
                if let Out::Sink(sink) = out {
                    return Err(Problem::CopyStar {
                        target: sink.label(None),
                    });
                }
                if setop.is_some_and(|s| !s.leftmost) {
                    return Err(Problem::Star {
                        place: "set operation",
                    });
                }
                Ok(())
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                match self.mentions(e) {
                    Some(hit) => Err(hit.problem(place)),
                    None => Ok(()),
                }
            }
            SelectItem::UnnamedExpr(e) => self.output(e, None, j, out, plain, setop, place),
            SelectItem::ExprWithAlias { expr, alias } => {
                self.output(expr, Some(norm_ident(alias)), j, out, plain, setop, place)
            }
            SelectItem::ExprWithAliases { expr, .. } => match self.mentions(expr) {
                Some(hit) => Err(hit.problem(place)),
                None => Ok(()),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn output(
        &mut self,
        e: &Expr,
        alias: Option<String>,
        j: usize,
        out: Out<'_>,
        plain: bool,
        setop: Option<&Setop<'_>>,
        place: &'static str,
    ) -> Result<(), Problem> {
        let mut e = e;
        while let Expr::Nested(inner) = e {
            e = inner;
        }
        let column = match e {
            Expr::Identifier(id) => {
                let n = norm_ident(id);
                if self.rows.contains(&n) {
                    return Err(Problem::WholeRow { name: n, place });
                }
                n
            }
            Expr::CompoundIdentifier(ids) if !ids.is_empty() => {
                let names: Vec<String> = ids.iter().map(norm_ident).collect();
                if let [.., qualifier, last] = names.as_slice() {
                    // `schema.table` as a whole-row reference (the qualifier is no relation
                    // here), or `alias.f` meaning `f(alias)` (see ROW_FUNCTIONS).
                    let schema_table = !self.rows.contains(qualifier) && self.rows.contains(last);
                    let row_function =
                        self.rows.contains(qualifier) && ROW_FUNCTIONS.contains(&last.as_str());
                    if schema_table || row_function {
                        return Err(Problem::WholeRow {
                            name: names.join("."),
                            place,
                        });
                    }
                }
                names.last().cloned().unwrap_or_default()
            }
            other => {
                return match self.mentions(other) {
                    Some(hit) => Err(hit.problem(place)),
                    None => Ok(()),
                }
            }
        };
        if !self.masked(&column) {
            return Ok(());
        }
        let own = alias.unwrap_or_else(|| column.clone());
        let ok = match (out, setop) {
            (Out::Sink(sink), _) => {
                let name = setop.map_or(Some(own.as_str()), |s| s.name(j));
                return sink
                    .check(self.rules, j, name)
                    .map_err(|target| Problem::Copy { column, target });
            }
            (_, Some(s)) => match s.name(j) {
                Some(n) if self.masked(n) => true,
                other => {
                    return Err(Problem::Rename {
                        alias: other.unwrap_or("?column?").to_owned(),
                        column,
                    })
                }
            },
            (Out::Client, None) => self.masked(&own) || plain,
            (Out::Nested, None) => self.masked(&own),
        };
        if ok {
            Ok(())
        } else {
            Err(Problem::Rename { column, alias: own })
        }
    }

    fn table_with_joins(&mut self, twj: &TableWithJoins, plain: &mut bool) -> Result<(), Problem> {
        self.table_factor(&twj.relation, plain)?;
        for join in &twj.joins {
            self.table_factor(&join.relation, plain)?;
            if matches!(
                join_constraint(&join.join_operator),
                Some(JoinConstraint::Using(_) | JoinConstraint::Natural)
            ) {
                // Merged USING columns of outer joins are COALESCE expressions without origin.
                *plain = false;
            }
        }
        Ok(())
    }

    fn table_factor(&mut self, tf: &TableFactor, plain: &mut bool) -> Result<(), Problem> {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let parts = name_parts(name);
                let last = parts.last().cloned().unwrap_or_default();
                if parts.len() == 1 && self.ctes.contains(&last) {
                    *plain = false;
                }
                self.rows.push(last.clone());
                if let Some(a) = alias {
                    self.rows.push(norm_ident(&a.name));
                    if !a.columns.is_empty() {
                        return Err(Problem::ColumnAliases { relation: last });
                    }
                }
                Ok(())
            }
            TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } => {
                *plain = false;
                self.rows.push(match alias {
                    Some(a) => norm_ident(&a.name),
                    None => last_name(name),
                });
                match self.mentions(&args.args) {
                    Some(hit) => Err(hit.problem("arguments of a function in FROM")),
                    None => Ok(()),
                }
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                *plain = false;
                self.query(subquery, Out::Nested)?;
                if let Some(a) = alias {
                    let name = norm_ident(&a.name);
                    self.rows.push(name.clone());
                    if !a.columns.is_empty() && self.may_carry_masked(subquery) {
                        return Err(Problem::ColumnAliases { relation: name });
                    }
                }
                Ok(())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                self.table_with_joins(table_with_joins, plain)?;
                if let Some(a) = alias {
                    let name = norm_ident(&a.name);
                    self.rows.push(name.clone());
                    if !a.columns.is_empty() {
                        return Err(Problem::ColumnAliases { relation: name });
                    }
                }
                Ok(())
            }
            other => {
                *plain = false;
                match self.mentions(other) {
                    Some(hit) => Err(hit.problem("FROM clause")),
                    None => Ok(()),
                }
            }
        }
    }

    fn insert(&mut self, ins: &Insert, returning: Out<'_>) -> Result<(), Problem> {
        let TableObject::TableName(name) = &ins.table else {
            return match self.mentions(ins) {
                Some(hit) => Err(hit.problem("INSERT")),
                None => Ok(()),
            };
        };
        let target = schema_table(name);
        let sink = Sink {
            target: Some(target.clone()),
            columns: (!ins.columns.is_empty()).then(|| ins.columns.iter().map(last_name).collect()),
            by_output_name: false,
        };
        if let Some(source) = &ins.source {
            self.query(source, Out::Sink(&sink))?;
        }
        let rows = self.rows.len();
        self.rows.push(target.1.clone());
        if let Some(a) = &ins.table_alias {
            self.rows.push(norm_ident(&a.alias));
        }
        let result = (|| {
            if let Some(OnInsert::OnConflict(oc)) = &ins.on {
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    self.rows.push("excluded".to_owned());
                    self.assignments(&target, &du.assignments)?;
                }
            }
            if let Some(items) = &ins.returning {
                self.returning(items, returning, true)?;
            }
            Ok(())
        })();
        self.rows.truncate(rows);
        result
    }

    fn update(&mut self, u: &Update, returning: Out<'_>) -> Result<(), Problem> {
        let rows = self.rows.len();
        let result = (|| {
            let mut plain = true;
            self.table_with_joins(&u.table, &mut plain)?;
            if let Some(
                UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from),
            ) = &u.from
            {
                for twj in from {
                    self.table_with_joins(twj, &mut plain)?;
                }
            }
            let target = match &u.table.relation {
                TableFactor::Table { name, .. } => schema_table(name),
                _ => (String::new(), String::new()),
            };
            self.assignments(&target, &u.assignments)?;
            if let Some(items) = &u.returning {
                self.returning(items, returning, plain)?;
            }
            Ok(())
        })();
        self.rows.truncate(rows);
        result
    }

    fn delete(&mut self, d: &Delete, returning: Out<'_>) -> Result<(), Problem> {
        let rows = self.rows.len();
        let result = (|| {
            let mut plain = true;
            let from = match &d.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            for twj in from.iter().chain(d.using.iter().flatten()) {
                self.table_with_joins(twj, &mut plain)?;
            }
            if let Some(items) = &d.returning {
                self.returning(items, returning, plain)?;
            }
            Ok(())
        })();
        self.rows.truncate(rows);
        result
    }

    fn merge(&mut self, m: &Merge) -> Result<(), Problem> {
        let rows = self.rows.len();
        let result = (|| {
            let mut plain = true;
            self.table_factor(&m.table, &mut plain)?;
            self.table_factor(&m.source, &mut plain)?;
            let target = match &m.table {
                TableFactor::Table { name, .. } => schema_table(name),
                _ => (String::new(), String::new()),
            };
            for clause in &m.clauses {
                match &clause.action {
                    MergeAction::Update(u) => match &u.kind {
                        MergeUpdateKind::Set(assignments) => {
                            self.assignments(&target, assignments)?;
                        }
                        MergeUpdateKind::Wildcard => {
                            return Err(Problem::CopyStar {
                                target: format!("{}.{}", target.0, target.1),
                            })
                        }
                    },
                    MergeAction::Insert(i) => match &i.kind {
                        MergeInsertKind::Values(v) => {
                            let sink = Sink {
                                target: Some(target.clone()),
                                columns: (!i.columns.is_empty())
                                    .then(|| i.columns.iter().map(last_name).collect()),
                                by_output_name: false,
                            };
                            self.values(v, Out::Sink(&sink), None)?;
                        }
                        MergeInsertKind::Row | MergeInsertKind::Wildcard => {
                            return Err(Problem::CopyStar {
                                target: format!("{}.{}", target.0, target.1),
                            })
                        }
                    },
                    MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
                }
            }
            Ok(())
        })();
        self.rows.truncate(rows);
        result
    }

    /// `SET col = value`: a value reading a masked column must land in a masked column.
    fn assignments(
        &mut self,
        target: &(String, String),
        list: &[Assignment],
    ) -> Result<(), Problem> {
        for a in list {
            let Some(hit) = self.mentions(&a.value) else {
                continue;
            };
            let Hit::Column(column) = hit else {
                return Err(hit.problem("SET clause"));
            };
            let columns: Vec<String> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![last_name(n)],
                AssignmentTarget::Tuple(ns) => ns.iter().map(last_name).collect(),
            };
            for c in columns {
                if self.rules.column_mode(&target.0, &target.1, &c).is_none() {
                    return Err(Problem::Copy {
                        column,
                        target: format!("{}.{}.{c}", target.0, target.1),
                    });
                }
            }
        }
        Ok(())
    }

    fn returning(
        &mut self,
        items: &[SelectItem],
        out: Out<'_>,
        plain: bool,
    ) -> Result<(), Problem> {
        for (j, item) in items.iter().enumerate() {
            self.item(item, j, out, plain, None, "RETURNING list")?;
        }
        Ok(())
    }

    /// Whether the output of `q` may contain a masked column (a star, or any mention).
    fn may_carry_masked(&self, q: &Query) -> bool {
        let mut queries = vec![q];
        while let Some(q) = queries.pop() {
            let mut bodies = vec![&*q.body];
            while let Some(b) = bodies.pop() {
                let items: &[SelectItem] = match b {
                    SetExpr::SetOperation { left, right, .. } => {
                        bodies.push(left);
                        bodies.push(right);
                        continue;
                    }
                    SetExpr::Query(inner) => {
                        queries.push(inner);
                        continue;
                    }
                    SetExpr::Select(s) => &s.projection,
                    SetExpr::Values(v) => {
                        if scan(self.rules, &Names::default(), v).is_some() {
                            return true;
                        }
                        continue;
                    }
                    SetExpr::Insert(s)
                    | SetExpr::Update(s)
                    | SetExpr::Delete(s)
                    | SetExpr::Merge(s) => match s {
                        Statement::Insert(i) => i.returning.as_deref().unwrap_or_default(),
                        Statement::Update(u) => u.returning.as_deref().unwrap_or_default(),
                        Statement::Delete(d) => d.returning.as_deref().unwrap_or_default(),
                        _ => &[],
                    },
                    SetExpr::Table(_) => return true,
                };
                for item in items {
                    let e = match item {
                        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => return true,
                        SelectItem::UnnamedExpr(e)
                        | SelectItem::ExprWithAlias { expr: e, .. }
                        | SelectItem::ExprWithAliases { expr: e, .. } => e,
                    };
                    if scan(self.rules, &Names::default(), e).is_some() {
                        return true;
                    }
                }
            }
        }
        false
    }
}

fn schema_table(name: &ObjectName) -> (String, String) {
    let mut names = Vec::new();
    table_names(name, &mut names);
    // For `pg_*` the first entry is pg_catalog; the last one is the public spelling.
    let full = names.pop().unwrap_or_default();
    match full.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => ("public".to_owned(), full),
    }
}

fn new_table_sink<'a>(
    name: &ObjectName,
    columns: impl Iterator<Item = &'a sqlparser::ast::Ident>,
) -> Sink {
    let columns: Vec<String> = columns.map(norm_ident).collect();
    Sink {
        target: Some(schema_table(name)),
        by_output_name: columns.is_empty(),
        columns: (!columns.is_empty()).then_some(columns),
    }
}

/// A set-operation leaf that is a SELECT, possibly parenthesized without its own WITH.
fn leaf_select(leaf: &SetExpr) -> Option<&Select> {
    match leaf {
        SetExpr::Select(s) => Some(s),
        SetExpr::Query(q) if q.with.is_none() => match &*q.body {
            SetExpr::Select(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Output column names of a SELECT, up to the first star (after which positions are unknown).
fn output_names(s: &Select) -> Vec<Option<String>> {
    let mut names = Vec::new();
    for item in &s.projection {
        let name = match item {
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => break,
            SelectItem::ExprWithAlias { alias, .. } => Some(norm_ident(alias)),
            SelectItem::UnnamedExpr(e) => {
                let mut e = e;
                while let Expr::Nested(inner) = e {
                    e = inner;
                }
                match e {
                    Expr::Identifier(id) => Some(norm_ident(id)),
                    Expr::CompoundIdentifier(ids) => ids.last().map(norm_ident),
                    _ => None,
                }
            }
            SelectItem::ExprWithAliases { .. } => None,
        };
        names.push(name);
    }
    names
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c)
        | JoinOperator::AsOf { constraint: c, .. } => Some(c),
        _ => None,
    }
}

/// PostgreSQL reads `alias.f`, when the relation has no column `f`, as `f(alias)`: a function
/// (or function-style cast) applied to the whole row. These names turn a row into text or JSON;
/// `alias.<one of them>` in an output is refused as a whole-row reference. (`name` and `text`
/// are left out as they are common column names; the value detectors are the backstop there.)
const ROW_FUNCTIONS: &[&str] = &[
    "to_json",
    "to_jsonb",
    "row_to_json",
    "json_build_array",
    "jsonb_build_array",
    "json_agg",
    "jsonb_agg",
    "array_agg",
    "hstore",
    "concat",
    "format",
    "quote_literal",
    "quote_nullable",
    "json",
    "jsonb",
    "xml",
    "varchar",
    "bpchar",
    "citext",
    "record_out",
];

/// Scans a node for a masked column name, a whole-row reference (a single name that is a
/// relation in scope, `alias.*` as a function argument) or a star in a nested query — except
/// inside EXISTS / IN subqueries, which only yield booleans (predicates, like WHERE).
fn scan<V: Visit + ?Sized>(rules: &Rules, rows: &Names, node: &V) -> Option<Hit> {
    let mut m = Mentions {
        rules,
        hit: None,
        idents: Vec::new(),
        row_calls: Vec::new(),
        relations: HashSet::new(),
        exempt: Vec::new(),
        exempt_depth: 0,
    };
    let _ = node.visit(&mut m);
    if m.hit.is_some() {
        return m.hit;
    }
    let relation = |n: &String| rows.contains(n) || m.relations.contains(n.as_str());
    if let Some(n) = m.idents.iter().find(|n| relation(n)) {
        return Some(Hit::WholeRow(n.clone()));
    }
    m.row_calls
        .iter()
        .find(|(qualifier, _)| relation(qualifier))
        .map(|(q, f)| Hit::WholeRow(format!("{q}.{f}")))
}

struct Mentions<'r> {
    rules: &'r Rules,
    hit: Option<Hit>,
    /// Single-part names seen (whole-row candidates, checked once all relations are known).
    idents: Vec<String>,
    /// `qualifier.f` with `f` in ROW_FUNCTIONS (whole-row if the qualifier is a relation).
    row_calls: Vec<(String, String)>,
    /// Relation names and aliases inside the scanned node.
    relations: HashSet<String>,
    exempt: Vec<*const Query>,
    exempt_depth: usize,
}

impl Mentions<'_> {
    fn found(&mut self, hit: Hit) -> ControlFlow<()> {
        self.hit = Some(hit);
        ControlFlow::Break(())
    }
}

impl Visitor for Mentions<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.exempt.iter().any(|p| std::ptr::eq(*p, q)) {
            self.exempt_depth += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.exempt.iter().any(|p| std::ptr::eq(*p, q)) {
            self.exempt_depth = self.exempt_depth.saturating_sub(1);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if self.exempt_depth == 0
            && s.projection.iter().any(|i| {
                matches!(
                    i,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            })
        {
            return self.found(Hit::Star);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        if self.exempt_depth == 0 {
            match tf {
                TableFactor::Table { name, alias, .. } => {
                    self.relations.insert(last_name(name));
                    if let Some(a) = alias {
                        self.relations.insert(norm_ident(&a.name));
                    }
                }
                TableFactor::Derived { alias: Some(a), .. }
                | TableFactor::Function { alias: Some(a), .. }
                | TableFactor::UNNEST { alias: Some(a), .. }
                | TableFactor::NestedJoin { alias: Some(a), .. } => {
                    self.relations.insert(norm_ident(&a.name));
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.exempt_depth > 0 {
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Exists { subquery, .. } | Expr::InSubquery { subquery, .. } => {
                self.exempt.push(&**subquery);
            }
            Expr::Identifier(id) => {
                let n = norm_ident(id);
                if self.rules.masks_column_named(&n) {
                    return self.found(Hit::Column(n));
                }
                self.idents.push(n);
            }
            Expr::CompoundIdentifier(ids) => {
                if let [.., qualifier, last] = ids.as_slice() {
                    let n = norm_ident(last);
                    if self.rules.masks_column_named(&n) {
                        return self.found(Hit::Column(n));
                    }
                    if ROW_FUNCTIONS.contains(&n.as_str()) {
                        self.row_calls.push((norm_ident(qualifier), n));
                    }
                }
            }
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => return self.found(Hit::Star),
            Expr::Function(f) => {
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        let (FunctionArg::Unnamed(a)
                        | FunctionArg::Named { arg: a, .. }
                        | FunctionArg::ExprNamed { arg: a, .. }) = arg;
                        match a {
                            FunctionArgExpr::QualifiedWildcard(name) => {
                                return self.found(Hit::WholeRow(format!(
                                    "{}.*",
                                    name_parts(name).join(".")
                                )))
                            }
                            FunctionArgExpr::WildcardWithOptions(_) => {
                                return self.found(Hit::Star)
                            }
                            // count(*)
                            FunctionArgExpr::Wildcard | FunctionArgExpr::Expr(_) => {}
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}
