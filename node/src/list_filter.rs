//! Temporal's list filter language, as far as Norn's visibility supports it:
//!
//! ```text
//! WorkflowType = 'Order' AND (ExecutionStatus = 'Running' OR StartTime > '2026-01-01T00:00:00Z')
//! WorkflowId IN ('a', 'b') ORDER BY StartTime DESC
//! CloseTime BETWEEN '2026-01-01T00:00:00Z' AND '2026-02-01T00:00:00Z'
//! ```
//!
//! Fields: `WorkflowId`, `RunId`, `WorkflowType`, `TaskQueue`, `ExecutionStatus`, `StartTime`,
//! `CloseTime`, `ExecutionTime`. Operators: `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `BETWEEN ... AND`,
//! `[NOT] IN (...)`, `STARTS_WITH`, `IS [NOT] NULL`, combined with `AND`, `OR` and parentheses.
//! Times are RFC 3339 strings or integer nanoseconds since the epoch. `ORDER BY` takes the same
//! fields (default: `StartTime DESC`). `GROUP BY ExecutionStatus` is accepted for counts.

use std::cmp::Ordering;

/// A field a filter can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Workflow id.
    WorkflowId,
    /// Run id.
    RunId,
    /// Workflow type name.
    WorkflowType,
    /// Task queue name.
    TaskQueue,
    /// `Running`, `Completed`, `Failed`, `Canceled`, `Terminated`, `ContinuedAsNew`, `TimedOut`.
    ExecutionStatus,
    /// Start time.
    StartTime,
    /// Close time (absent while open).
    CloseTime,
    /// Execution time (the start time: Norn has no delayed starts yet).
    ExecutionTime,
}

impl Field {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "WorkflowId" => Field::WorkflowId,
            "RunId" => Field::RunId,
            "WorkflowType" => Field::WorkflowType,
            "TaskQueue" => Field::TaskQueue,
            "ExecutionStatus" => Field::ExecutionStatus,
            "StartTime" => Field::StartTime,
            "CloseTime" => Field::CloseTime,
            "ExecutionTime" => Field::ExecutionTime,
            other => {
                return Err(format!(
                    "unknown search attribute {other}; Norn supports WorkflowId, RunId, WorkflowType, TaskQueue, \
                     ExecutionStatus, StartTime, CloseTime and ExecutionTime"
                ))
            }
        })
    }

    fn is_time(self) -> bool {
        matches!(self, Field::StartTime | Field::CloseTime | Field::ExecutionTime)
    }
}

/// A comparable value: text, or a time in milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// Text.
    Text(String),
    /// Milliseconds since the epoch.
    Time(i64),
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// Longest query accepted, in bytes (Temporal refuses long visibility queries too).
pub const QUERY_BYTES_MAX: usize = 32 << 10;
/// Deepest nesting of parentheses accepted.
pub const QUERY_DEPTH_MAX: usize = 32;

/// A parsed filter. `AND` and `OR` chains are flat lists, so a long chain is wide rather than
/// deep: evaluating and dropping a filter recurses only as deep as its parentheses nest
/// (at most [`QUERY_DEPTH_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// All hold.
    And(Vec<Expr>),
    /// At least one holds.
    Or(Vec<Expr>),
    /// `field op value`.
    Cmp(Field, Op, Value),
    /// `field BETWEEN lo AND hi` (inclusive).
    Between(Field, Value, Value),
    /// `field [NOT] IN (values)`.
    In(Field, Vec<Value>, bool),
    /// `field STARTS_WITH prefix`.
    StartsWith(Field, String),
    /// `field IS [NOT] NULL` (the bool is true for `IS NOT NULL`).
    IsNull(Field, bool),
}

/// A parsed list query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// The filter; none matches everything.
    pub filter: Option<Expr>,
    /// Sort keys: field and descending.
    pub order: Vec<(Field, bool)>,
    /// `GROUP BY` fields.
    pub group_by: Vec<Field>,
}

/// What a filter is evaluated against.
pub trait Row {
    /// The value of `field`, or none (a close time while open).
    fn get(&self, field: Field) -> Option<Value>;
}

impl ListQuery {
    /// True if `row` passes the filter.
    pub fn matches(&self, row: &dyn Row) -> bool {
        self.filter.as_ref().is_none_or(|e| eval(e, row))
    }

    /// Orders two rows by the `ORDER BY` keys (default: start time, newest first).
    pub fn compare(&self, a: &dyn Row, b: &dyn Row) -> Ordering {
        let default = [(Field::StartTime, true)];
        let keys: &[(Field, bool)] = if self.order.is_empty() { &default } else { &self.order };
        for &(f, desc) in keys {
            let o = a.get(f).cmp(&b.get(f));
            let o = if desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.get(Field::RunId).cmp(&b.get(Field::RunId))
    }
}

fn eval(e: &Expr, row: &dyn Row) -> bool {
    match e {
        Expr::And(all) => all.iter().all(|e| eval(e, row)),
        Expr::Or(any) => any.iter().any(|e| eval(e, row)),
        Expr::Cmp(f, op, v) => {
            let Some(x) = row.get(*f) else { return false };
            let o = cmp_field(*f, &x, v);
            match op {
                Op::Eq => o == Ordering::Equal,
                Op::Ne => o != Ordering::Equal,
                Op::Lt => o == Ordering::Less,
                Op::Le => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                Op::Ge => o != Ordering::Less,
            }
        }
        Expr::Between(f, lo, hi) => row
            .get(*f)
            .is_some_and(|x| cmp_field(*f, &x, lo) != Ordering::Less && cmp_field(*f, &x, hi) != Ordering::Greater),
        Expr::In(f, vs, negated) => match row.get(*f) {
            Some(x) => vs.iter().any(|v| cmp_field(*f, &x, v) == Ordering::Equal) != *negated,
            None => false,
        },
        Expr::StartsWith(f, p) => matches!(row.get(*f), Some(Value::Text(t)) if t.starts_with(p.as_str())),
        Expr::IsNull(f, not) => row.get(*f).is_some() == *not,
    }
}

fn cmp_field(f: Field, a: &Value, b: &Value) -> Ordering {
    match (f, a, b) {
        (Field::ExecutionStatus, Value::Text(a), Value::Text(b)) => a.to_lowercase().cmp(&b.to_lowercase()),
        _ => a.cmp(b),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(i64),
    Sym(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string in query".into()),
                    Some('\\') if i + 1 < chars.len() => {
                        v.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        if chars.get(i + 1) == Some(&c) {
                            v.push(c);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&x) => {
                        v.push(x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(v));
        } else if c == '`' {
            let end = chars[i + 1..].iter().position(|&x| x == '`').ok_or("unterminated ` in query")?;
            out.push(Tok::Word(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Num(text.parse().map_err(|_| format!("number {text} is out of range"))?));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = match two.as_str() {
                "!=" => Some("!="),
                "<>" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let one = match c {
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                other => return Err(format!("unexpected character {other:?} in query")),
            };
            out.push(Tok::Sym(one));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw} at {}", self.here()))
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = matches!(self.toks.get(self.pos), Some(Tok::Sym(x)) if *x == s);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn here(&self) -> String {
        match self.toks.get(self.pos) {
            None => "the end of the query".into(),
            Some(Tok::Word(w)) => format!("'{w}'"),
            Some(Tok::Str(s)) => format!("'{s}'"),
            Some(Tok::Num(n)) => n.to_string(),
            Some(Tok::Sym(s)) => format!("'{s}'"),
        }
    }

    fn at_clause_end(&self) -> bool {
        self.pos >= self.toks.len() || self.peek_kw("ORDER") || self.peek_kw("GROUP")
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut any = vec![self.and()?];
        while self.eat_kw("OR") {
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 { any.remove(0) } else { Expr::Or(any) })
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut all = vec![self.primary()?];
        while self.eat_kw("AND") {
            all.push(self.primary()?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Expr::And(all) })
    }

    fn field(&mut self) -> Result<Field, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Field::parse(&w)
            }
            _ => Err(format!("expected a field name at {}", self.here())),
        }
    }

    fn value(&mut self, f: Field) -> Result<Value, String> {
        let tok = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match (tok, f.is_time()) {
            (Some(Tok::Str(s)), true) => Ok(Value::Time(parse_rfc3339(&s)?)),
            (Some(Tok::Num(n)), true) => Ok(Value::Time(n.div_euclid(1_000_000))),
            (Some(Tok::Str(s)), false) => Ok(Value::Text(s)),
            _ => {
                self.pos -= 1;
                Err(format!("expected a quoted value at {}", self.here()))
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        if self.eat_sym("(") {
            self.depth += 1;
            if self.depth > QUERY_DEPTH_MAX {
                return Err(format!("parentheses nest deeper than {QUERY_DEPTH_MAX} levels"));
            }
            let e = self.or()?;
            self.depth -= 1;
            if !self.eat_sym(")") {
                return Err(format!("expected ')' at {}", self.here()));
            }
            return Ok(e);
        }
        let f = self.field()?;
        if self.eat_kw("BETWEEN") {
            let lo = self.value(f)?;
            self.expect_kw("AND")?;
            let hi = self.value(f)?;
            return Ok(Expr::Between(f, lo, hi));
        }
        let negated = self.eat_kw("NOT");
        if self.eat_kw("IN") {
            if !self.eat_sym("(") {
                return Err(format!("expected '(' after IN at {}", self.here()));
            }
            let mut vs = vec![self.value(f)?];
            while self.eat_sym(",") {
                vs.push(self.value(f)?);
            }
            if !self.eat_sym(")") {
                return Err(format!("expected ')' at {}", self.here()));
            }
            return Ok(Expr::In(f, vs, negated));
        }
        if negated {
            return Err(format!("expected IN after NOT at {}", self.here()));
        }
        if self.eat_kw("STARTS_WITH") {
            return match self.value(f)? {
                Value::Text(p) => Ok(Expr::StartsWith(f, p)),
                Value::Time(_) => Err("STARTS_WITH needs a text field".into()),
            };
        }
        if self.eat_kw("IS") {
            let not = self.eat_kw("NOT");
            self.expect_kw("NULL")?;
            return Ok(Expr::IsNull(f, not));
        }
        let op = match self.toks.get(self.pos) {
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("!=")) => Op::Ne,
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            _ => return Err(format!("expected an operator at {}", self.here())),
        };
        self.pos += 1;
        Ok(Expr::Cmp(f, op, self.value(f)?))
    }
}

/// Parses a list query; the error says what is wrong and where.
pub fn parse(query: &str) -> Result<ListQuery, String> {
    if query.len() > QUERY_BYTES_MAX {
        return Err(format!("query is {} bytes long, more than the {QUERY_BYTES_MAX} allowed", query.len()));
    }
    let mut p = Parser { toks: tokenize(query)?, pos: 0, depth: 0 };
    let filter = if p.at_clause_end() { None } else { Some(p.or()?) };
    let mut order = Vec::new();
    let mut group_by = Vec::new();
    while p.pos < p.toks.len() {
        if p.eat_kw("ORDER") {
            p.expect_kw("BY")?;
            loop {
                let f = p.field()?;
                let desc = if p.eat_kw("DESC") {
                    true
                } else {
                    p.eat_kw("ASC");
                    false
                };
                order.push((f, desc));
                if !p.eat_sym(",") {
                    break;
                }
            }
        } else if p.eat_kw("GROUP") {
            p.expect_kw("BY")?;
            let f = p.field()?;
            if f != Field::ExecutionStatus {
                return Err("GROUP BY supports ExecutionStatus only".into());
            }
            group_by.push(f);
        } else {
            return Err(format!("unexpected {} in query", p.here()));
        }
    }
    Ok(ListQuery { filter, order, group_by })
}

/// Milliseconds since the epoch of an RFC 3339 time such as `2026-11-22T10:00:00.5+01:00`.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("'{s}' is not an RFC 3339 time (like 2026-01-31T12:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit())).and_then(|t| t.parse().ok()).ok_or_else(bad)
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<i64>().map_err(|_| bad())? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let v = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    // Days from the civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let (y2, m2) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Ok(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R {
        id: &'static str,
        status: &'static str,
        start: i64,
        close: Option<i64>,
    }

    impl Row for R {
        fn get(&self, f: Field) -> Option<Value> {
            match f {
                Field::WorkflowId => Some(Value::Text(self.id.into())),
                Field::RunId => Some(Value::Text(format!("run-{}", self.id))),
                Field::WorkflowType => Some(Value::Text("T".into())),
                Field::TaskQueue => Some(Value::Text("q".into())),
                Field::ExecutionStatus => Some(Value::Text(self.status.into())),
                Field::StartTime | Field::ExecutionTime => Some(Value::Time(self.start)),
                Field::CloseTime => self.close.map(Value::Time),
            }
        }
    }

    fn rows() -> Vec<R> {
        vec![
            R { id: "a1", status: "Running", start: 1_000, close: None },
            R { id: "a2", status: "Completed", start: 2_000, close: Some(5_000) },
            R { id: "b1", status: "Failed", start: 3_000, close: Some(4_000) },
        ]
    }

    fn ids(q: &str) -> Vec<&'static str> {
        let q = parse(q).unwrap();
        let mut rs: Vec<R> = rows().into_iter().filter(|r| q.matches(r)).collect();
        rs.sort_by(|a, b| q.compare(a, b));
        rs.into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn filters_combine_and_order() {
        assert_eq!(ids(""), vec!["b1", "a2", "a1"], "default order: newest start first");
        assert_eq!(ids("ExecutionStatus = 'Running'"), vec!["a1"]);
        assert!(parse("executionstatus = 'Running'").is_err(), "field names are case-sensitive");
        assert_eq!(ids("ExecutionStatus = 'running'"), vec!["a1"], "status values are not");
        assert_eq!(ids("ExecutionStatus != 'Running' ORDER BY StartTime ASC"), vec!["a2", "b1"]);
        assert_eq!(
            ids("WorkflowId IN ('a1', 'b1') AND (StartTime > 1500000000 OR WorkflowId = 'a1')"),
            vec!["b1", "a1"]
        );
        assert_eq!(ids("WorkflowId NOT IN ('a1')"), vec!["b1", "a2"]);
        assert_eq!(ids("WorkflowId STARTS_WITH 'a' ORDER BY WorkflowId"), vec!["a1", "a2"]);
        assert_eq!(ids("CloseTime IS NULL"), vec!["a1"]);
        assert_eq!(ids("CloseTime < 4500000000"), vec!["b1"], "open runs have no close time");
        assert_eq!(
            ids("StartTime BETWEEN '1970-01-01T00:00:01.5Z' AND '1970-01-01T00:00:03Z' ORDER BY CloseTime DESC"),
            vec!["a2", "b1"]
        );
        assert_eq!(ids("WorkflowType = 'T' and TaskQueue = \"q\" or RunId = 'x'").len(), 3);
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (q, want) in [
            ("Foo = 'x'", "unknown search attribute Foo"),
            ("WorkflowId = ", "expected a quoted value"),
            ("WorkflowId 'x'", "expected an operator"),
            ("(WorkflowId = 'x'", "expected ')'"),
            ("StartTime > 'yesterday'", "not an RFC 3339 time"),
            ("WorkflowId = 'x' LIMIT 3", "unexpected 'LIMIT'"),
            ("WorkflowId = 'x", "unterminated string"),
            ("GROUP BY WorkflowType", "ExecutionStatus only"),
        ] {
            let e = parse(q).unwrap_err();
            assert!(e.contains(want), "{q}: {e}");
        }
    }

    #[test]
    fn long_chains_and_deep_nesting_are_bounded_without_recursion_limits() {
        // A chain as long as the size limit allows parses, evaluates and drops without deep
        // recursion (it would overflow the stack as a nested tree).
        let term = "WorkflowId = 'a' AND ";
        let long: String = term.repeat((QUERY_BYTES_MAX - 20) / term.len()) + "RunId = 'r1'";
        let q = parse(&long).expect("a long chain within the limit parses");
        assert!(matches!(&q.filter, Some(Expr::And(v)) if v.len() > 1000));
        assert!(!q.matches(&rows()[0]));
        drop(q);
        let over = "WorkflowId = 'a' OR ".repeat(QUERY_BYTES_MAX / 10);
        assert!(parse(&over).unwrap_err().contains("bytes long"));
        let deep = format!("{}WorkflowId = 'a'{}", "(".repeat(QUERY_DEPTH_MAX + 1), ")".repeat(QUERY_DEPTH_MAX + 1));
        assert!(parse(&deep).unwrap_err().contains("nest deeper"));
        let ok = format!("{}WorkflowId = 'w1'{}", "(".repeat(QUERY_DEPTH_MAX), ")".repeat(QUERY_DEPTH_MAX));
        assert_eq!(parse(&ok).unwrap().filter, parse("WorkflowId = 'w1'").unwrap().filter);
        // A megabyte of parentheses is refused by size before any parsing.
        assert!(parse(&"(".repeat(1 << 20)).is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00.250Z").unwrap(), 1_795_341_600_250);
        assert_eq!(parse_rfc3339("2026-11-22T11:00:00+01:00").unwrap(), 1_795_341_600_000);
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z").unwrap(), 951_782_400_000);
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-11-22").is_err());
    }
}
