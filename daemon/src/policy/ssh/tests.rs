//! Table tests for the SSH policy: the shell reader, pattern matching, the shipped policies,
//! evasion attempts, legacy scp, file decisions, policy-file errors, and huge or deeply
//! nested input.

use std::path::Path;

use super::*;
use Action::{Allow, Approve, Deny};

const READONLY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/ssh-readonly.toml");
const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/ssh-ops.toml");

fn shipped(path: &str) -> SshPolicy {
    load(Path::new(path)).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy file named `t.toml` with this text.
fn policy(text: &str) -> SshPolicy {
    parse(Path::new("policies/t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    parse(Path::new("policies/t.toml"), text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("expected an error for:\n{text}"))
}

const HEAD: &str = "[policy]\nname = \"t\"\nprotocol = \"ssh\"\n";

/// Allows everything, so only built-in denials deny.
fn permissive() -> SshPolicy {
    policy(&format!(
        "{HEAD}default = \"allow\"\n[shell]\naction = \"allow\"\n[sftp]\naction = \"allow\"\n"
    ))
}

/// (command, action, rule) rows against one policy; `rule` is a prefix of SshDecision::rule.
fn run_table(p: &SshPolicy, cases: &[(&str, Action, &str)]) {
    let mut failures = Vec::new();
    for (cmd, action, rule) in cases {
        let d = p.decide_exec(cmd);
        if d.action != *action || !d.rule.starts_with(rule) {
            failures.push(format!(
                "{cmd:?}\n    want {action} {rule}\n    got  {} {} — {}",
                d.action, d.rule, d.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---- the shell reader --------------------------------------------------------------------

fn argvs(text: &str) -> Result<Vec<Vec<String>>, &'static str> {
    shell::parse(text)
        .map(|parts| parts.iter().map(|c| c.argv()).collect())
        .map_err(|r| r.what)
}

#[test]
fn shell_reader_splits_and_removes_quotes() {
    let cases: &[(&str, &[&[&str]])] = &[
        ("uptime", &[&["uptime"]]),
        ("  df   -h  ", &[&["df", "-h"]]),
        ("u'p'time", &[&["uptime"]]),
        ("u\"p\"time", &[&["uptime"]]),
        ("u\\ptime", &[&["uptime"]]),
        ("'uptime;rm'", &[&["uptime;rm"]]),
        (
            "echo 'a b' \"c d\" e\\ f",
            &[&["echo", "a b", "c d", "e f"]],
        ),
        ("echo \"a\\\"b\\$c\\\\d\\e\"", &[&["echo", "a\"b$c\\d\\e"]]),
        ("echo ''", &[&["echo", ""]]),
        ("echo \"it's\"", &[&["echo", "it's"]]),
        ("up\\\ntime", &[&["uptime"]]),
        ("uptime; df -h", &[&["uptime"], &["df", "-h"]]),
        (
            "uptime && df || free | wc -l & ps",
            &[&["uptime"], &["df"], &["free"], &["wc", "-l"], &["ps"]],
        ),
        ("uptime |& cat", &[&["uptime"], &["cat"]]),
        ("uptime\ndf\n\n", &[&["uptime"], &["df"]]),
        ("uptime &", &[&["uptime"]]),
        ("uptime;", &[&["uptime"]]),
        ("uptime # a comment; rm -rf /", &[&["uptime"]]),
        ("# only a comment", &[]),
        ("", &[]),
        ("   \n  ", &[]),
        ("echo a#b", &[&["echo", "a#b"]]),
        ("echo $", &[&["echo", "$"]]),
        ("echo \"$\"", &[&["echo", "$"]]),
        ("echo \"cost: $ 5\"", &[&["echo", "cost: $ 5"]]),
        ("uptime 2>&1", &[&["uptime"]]),
        ("uptime >&2", &[&["uptime"]]),
        ("uptime > /dev/null 2>/dev/null", &[&["uptime"]]),
        ("uptime >>/dev/null </dev/null", &[&["uptime"]]),
        ("uptime 3>&- 0<&0", &[&["uptime"]]),
        ("uptime 2>'/dev/null'", &[&["uptime"]]),
        ("echo 2 > /dev/null", &[&["echo", "2"]]),
        ("echo $(id)", &[&["id"], &["echo", "$(id)"]]),
        ("echo \"$(id -u)\"", &[&["id", "-u"], &["echo", "$(id -u)"]]),
        ("echo `id`", &[&["id"], &["echo", "`id`"]]),
        (
            "echo `echo \\`id\\``",
            &[&["id"], &["echo", "`id`"], &["echo", "`echo \\`id\\``"]],
        ),
        (
            "echo $(echo $(id))",
            &[&["id"], &["echo", "$(id)"], &["echo", "$(echo $(id))"]],
        ),
        ("echo $( (id) )", &[&["id"], &["echo", "$( (id) )"]]),
        ("echo $(id # )\n)", &[&["id"], &["echo", "$(id # )\\n)"]]),
        ("(uptime; df)", &[&["uptime"], &["df"]]),
        ("(uptime) >/dev/null 2>&1", &[&["uptime"]]),
        ("{ uptime; df; }", &[&["uptime"], &["df"]]),
        ("{ uptime; } 2>/dev/null && df", &[&["uptime"], &["df"]]),
        (
            "find . -exec ls {} \\;",
            &[&["find", ".", "-exec", "ls", "{}", ";"]],
        ),
        ("cmd a=b", &[&["cmd", "a=b"]]),
        ("'A=b' cmd", &[&["A=b", "cmd"]]),
        ("ls *.log", &[&["ls", "*.log"]]),
        ("ls '*.log'", &[&["ls", "*.log"]]),
        ("uptime &&\n df", &[&["uptime"], &["df"]]),
        ("tab\tseparated", &[&["tab", "separated"]]),
        ("é ü", &[&["é", "ü"]]),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let want: Vec<Vec<String>> = want
            .iter()
            .map(|c| c.iter().map(|s| s.to_string()).collect())
            .collect();
        match argvs(text) {
            Ok(got) if got == want => {}
            got => failures.push(format!("{text:?}\n    want {want:?}\n    got  {got:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_reader_refuses_what_it_cannot_decide() {
    let cases: &[(&str, &str)] = &[
        ("echo $HOME", "parameter-expansion"),
        ("cat${IFS}/etc/passwd", "parameter-expansion"),
        ("cat$IFS/etc/passwd", "parameter-expansion"),
        ("echo \"$IFS\"", "parameter-expansion"),
        ("${PATH}", "parameter-expansion"),
        ("echo ${PATH:0:1}", "parameter-expansion"),
        ("echo $1", "parameter-expansion"),
        ("echo $@", "parameter-expansion"),
        ("echo $?", "parameter-expansion"),
        ("echo $$", "parameter-expansion"),
        ("echo $((1+2))", "arithmetic"),
        ("echo $[1+2]", "arithmetic"),
        ("((x=1))", "arithmetic"),
        ("echo $'\\x72m'", "quoting"),
        ("echo $\"x\"", "quoting"),
        ("LD_PRELOAD=/x uptime", "assignment"),
        ("PATH=. uptime", "assignment"),
        ("A=1", "assignment"),
        ("A=\"x y\" uptime", "assignment"),
        ("uptime > /etc/passwd", "redirection"),
        ("uptime >/tmp/x", "redirection"),
        ("uptime >> ~/.bashrc", "redirection"),
        ("cat < /etc/shadow", "redirection"),
        ("uptime 2>/tmp/err", "redirection"),
        ("uptime &>/tmp/x", "ambiguous-redirection"),
        ("uptime &>/dev/null", "ambiguous-redirection"),
        // dash reads this as `df -h &` then `>/dev/null rm -rf /tmp/x`.
        ("df -h &>/dev/null rm -rf /tmp/x", "ambiguous-redirection"),
        ("X+=1 rm -rf /tmp/x", "assignment"),
        ("uptime >&/tmp/x", "redirection"),
        ("uptime <>/etc/x", "redirection"),
        ("uptime >|/etc/x", "redirection"),
        ("uptime > $(echo /etc/passwd)", "redirection"),
        ("uptime >/dev/sda", "redirection"),
        ("cat <<EOF\nx\nEOF", "here-document"),
        ("cat <<-EOF\nx\nEOF", "here-document"),
        ("cat <<< x", "here-document"),
        ("diff <(ls) <(ls /)", "process-substitution"),
        ("tee >(sh)", "process-substitution"),
        ("uptime > >(sh)", "process-substitution"),
        ("if true; then rm -rf /; fi", "compound"),
        ("for f in *; do rm $f; done", "compound"),
        ("while :; do :; done", "compound"),
        ("case x in x) rm;; esac", "compound"),
        ("function f { rm; }", "compound"),
        ("f() { rm; }", "compound"),
        ("! uptime", "compound"),
        ("time uptime", "compound"),
        ("[[ -f x ]]", "compound"),
        ("uptime; do", "compound"),
        ("{rm,-rf,/}", "brace-expansion"),
        ("cat /var/log/{syslog,..}/x", "brace-expansion"),
        ("echo }", "brace-expansion"),
        ("echo 'unbalanced", "unbalanced"),
        ("echo \"unbalanced", "unbalanced"),
        ("echo `unbalanced", "unbalanced"),
        ("echo $(unbalanced", "unbalanced"),
        ("(uptime", "unbalanced"),
        ("{ uptime; ", "unbalanced"),
        ("uptime)", "syntax"),
        ("uptime &&", "syntax"),
        ("uptime |", "syntax"),
        ("; uptime", "syntax"),
        ("uptime ;; df", "compound"),
        ("uptime | | df", "syntax"),
        ("uptime >", "syntax"),
        ("uptime \\", "syntax"),
        ("uptime (", "compound"),
        ("uptime\0", "control-character"),
        ("up\0time", "control-character"),
        ("uptime\r", "control-character"),
        ("uptime \x1b[A", "control-character"),
        ("uptime \u{85}", "control-character"),
        ("echo $(echo $HOME)", "parameter-expansion"),
        ("echo `echo $HOME`", "parameter-expansion"),
        ("echo $(cat <<EOF\nx\nEOF\n)", "here-document"),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        match shell::parse(text) {
            Err(r) if r.what == *want => {}
            got => failures.push(format!("{text:?}\n    want {want}\n    got  {got:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_reader_marks_dynamic_words() {
    // (text, index of the part, index of the word, dynamic, splits)
    let cases: &[(&str, usize, usize, bool, bool)] = &[
        ("echo $(id)", 1, 1, true, true),
        ("echo \"$(id)\"", 1, 1, true, false),
        ("echo x`id`", 1, 1, true, true),
        ("ls *.log", 0, 1, true, true),
        ("ls /var/lo?", 0, 1, true, true),
        ("ls [ab]", 0, 1, true, true),
        ("ls '*.log'", 0, 1, false, false),
        ("ls \\*", 0, 1, false, false),
        ("cat ~/x", 0, 1, true, false),
        ("cat '~/x'", 0, 1, false, false),
        ("echo plain", 0, 1, false, false),
    ];
    for (text, part, word, dynamic, splits) in cases {
        let parts = shell::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        let w = &parts[*part].words[*word];
        assert_eq!(
            (w.dynamic, w.splits),
            (*dynamic, *splits),
            "{text:?}: {w:?}"
        );
    }
}

#[test]
fn huge_deep_and_wide_input_is_refused_quickly() {
    let start = std::time::Instant::now();
    let p = permissive();

    let huge = format!("echo {}", "a".repeat(shell::MAX_LEN));
    let d = p.decide_exec(&huge);
    assert_eq!(
        (d.action, d.rule.as_str()),
        (Deny, "builtin/too-large"),
        "{}",
        d.reason
    );

    // Just under the limit: read, and allowed by the permissive policy.
    let big = format!("echo {}", "a ".repeat((shell::MAX_LEN - 10) / 2));
    assert!(big.len() <= shell::MAX_LEN);
    assert_eq!(p.decide_exec(&big).action, Allow);

    for deep in [
        format!("{}uptime{}", "$(".repeat(1000), ")".repeat(1000)),
        format!("{}uptime{}", "( ".repeat(1000), " )".repeat(1000)),
        format!("{}uptime{}", "{ ".repeat(1000), "; }".repeat(1000)),
        format!("echo {}", "\"$(echo ".repeat(1000)),
        format!("{}uptime", "$(echo ".repeat(5_000)),
    ] {
        let d = p.decide_exec(&deep);
        assert_eq!(
            (d.action, d.rule.as_str()),
            (Deny, "builtin/too-complex"),
            "{}",
            d.reason
        );
    }
    // Nesting within the limit is read.
    let ok = format!("echo {}uptime{}", "$(echo ".repeat(10), ")".repeat(10));
    assert_eq!(
        p.decide_exec(&ok).action,
        Allow,
        "{}",
        p.decide_exec(&ok).reason
    );
    // Backquotes nest through escaping (the text doubles per level), and count as nesting.
    let mut bq = "uptime".to_owned();
    for _ in 0..12 {
        bq = format!("echo `{}`", bq.replace('\\', "\\\\").replace('`', "\\`"));
    }
    assert_eq!(
        p.decide_exec(&bq).action,
        Allow,
        "{}",
        p.decide_exec(&bq).reason
    );
    assert_eq!(shell::parse(&bq).map(|parts| parts.len()), Ok(13));
    let mixed = format!("echo {}`uptime`{}", "$(echo ".repeat(16), ")".repeat(16));
    assert_eq!(p.decide_exec(&mixed).rule, "builtin/too-complex");

    let wide = "uptime;".repeat(shell::MAX_PARTS + 1);
    assert_eq!(p.decide_exec(&wide).rule, "builtin/too-complex");
    let wide_ok = "uptime;".repeat(shell::MAX_PARTS);
    assert_eq!(p.decide_exec(&wide_ok).action, Allow);

    // Adversarial globs against long words stay linear.
    let g = policy(&format!(
        "{HEAD}default = \"deny\"\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"x *a*a*a*a*a*a*a*a*b\", \"x **a**a**a**b\"]\n"
    ));
    let long = format!("x {}", "a".repeat(60_000));
    assert_eq!(g.decide_exec(&long).action, Deny);
    // Many words against a generous rule with an expansion in them.
    let d = policy(&format!(
        "{HEAD}default = \"allow\"\n[[rule]]\nname = \"r\"\naction = \"deny\"\ncommands = [\"x a a a a a a a a a a a a a a a b\"]\n"
    ));
    let many = format!("x {}", "* ".repeat(30_000));
    assert_eq!(d.decide_exec(&many).action, Deny);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

// ---- patterns ------------------------------------------------------------------------------

#[test]
fn glob_words_and_paths() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "abc", true),
        ("*", "", true),
        ("*", "a/b", false),
        ("**", "a/b", true),
        ("/var/log/**", "/var/log/syslog", true),
        ("/var/log/**", "/var/log/nginx/access.log", true),
        ("/var/log/**", "/var/log", false),
        ("/var/log/**", "/var/logs/x", false),
        ("/var/log/*", "/var/log/x", true),
        ("/var/log/*", "/var/log/a/b", false),
        ("/var/*/x", "/var/log/x", true),
        ("/var/**/x", "/var/a/b/c/x", true),
        ("/var/**/x", "/var/a/b/c/y", false),
        ("?*", "5", true),
        ("?*", "", false),
        ("?*", "a/b", false),
        ("a?c", "abc", true),
        ("a?c", "a/c", false),
        ("--type=?*", "--type=service", true),
        ("*.log", "x.log", true),
        ("*.log", ".log", true),
        (
            "*a*a*b",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            false,
        ),
        ("d?lete", "délete", true),
    ];
    for (pattern, text, want) in cases {
        let toks = path_toks(pattern);
        assert_eq!(
            Glob::new(toks).matches(text),
            *want,
            "{pattern:?} vs {text:?}"
        );
    }
}

#[test]
fn pattern_words_use_shell_quoting() {
    let lit = |s: &str| s.chars().map(Tok::Char).collect::<Vec<_>>();
    let cases: &[(&str, Vec<Vec<Tok>>)] = &[
        ("df -h", vec![lit("df"), lit("-h")]),
        ("echo 'a b'", vec![lit("echo"), lit("a b")]),
        ("echo \"a b\"", vec![lit("echo"), lit("a b")]),
        ("echo a\\ b", vec![lit("echo"), lit("a b")]),
        ("ls '*'", vec![lit("ls"), lit("*")]),
        ("ls \\*", vec![lit("ls"), lit("*")]),
        ("ls *", vec![lit("ls"), vec![Tok::Star]]),
        ("ls ***", vec![lit("ls"), vec![Tok::Stars]]),
        ("ls ?", vec![lit("ls"), vec![Tok::One]]),
        ("find '{}' ';'", vec![lit("find"), lit("{}"), lit(";")]),
    ];
    for (text, want) in cases {
        let got = shell::pattern_words(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(&got, want, "{text:?}");
    }
    for bad in [
        "",
        "  ",
        "echo $HOME",
        "a;b",
        "a | b",
        "a > b",
        "a (b)",
        "[ab]",
        "{a,b}",
        "~/x",
        "#x",
        "'open",
        "\"open",
        "x\\",
        "a\nb",
        "echo \"$x\"",
    ] {
        assert!(
            shell::pattern_words(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn rule_patterns_match_argv_words() {
    let p = policy(&format!(
        r#"{HEAD}default = "deny"
[[rule]]
name = "no-rm-root"
action = "deny"
commands = ["rm -rf /", "rm -rf /*"]

[[rule]]
name = "restart"
action = "approve"
commands = ["systemctl restart *"]

[[rule]]
name = "r"
action = "allow"
commands = [
    "uptime",
    "df -h *",
    "journalctl --no-pager *",
    "tail -n ?* /var/log/**",
    "printf 'a b'",
    "rm *",
    "systemctl *",
    "ls /var/log/*",
    "/usr/bin/id",
    "cat ../x",
    "echo *",
]
"#
    ));
    run_table(
        &p,
        &[
            ("uptime", Allow, "t/r"),
            ("uptime -p", Deny, "t/default"),
            ("df -h", Allow, "t/r"),
            ("df -h /var /tmp", Allow, "t/r"),
            ("df", Deny, "t/default"),
            ("journalctl --no-pager", Allow, "t/r"),
            ("journalctl --no-pager -u nginx -n 50", Allow, "t/r"),
            ("journalctl -u nginx", Deny, "t/default"),
            ("tail -n 100 /var/log/syslog", Allow, "t/r"),
            ("tail -n 100 /var/log/nginx/error.log", Allow, "t/r"),
            ("tail -n 100 /var/log/../../etc/shadow", Deny, "t/default"),
            (
                "tail -n 100 /var/log/nginx/../../../etc/shadow",
                Deny,
                "t/default",
            ),
            ("tail -n 100 /etc/shadow", Deny, "t/default"),
            ("tail -n a/b /var/log/x", Deny, "t/default"),
            ("tail -n 100 /var/log/*.log", Deny, "t/default"),
            ("tail -n 100 $(echo /var/log/x)", Deny, "t/default"),
            ("printf 'a b'", Allow, "t/r"),
            ("printf a b", Deny, "t/default"),
            ("printf \"a b\"", Allow, "t/r"),
            ("printf a\\ b", Allow, "t/r"),
            ("ls /var/log/syslog", Allow, "t/r"),
            ("ls /var/log/..", Deny, "t/default"),
            ("/usr/bin/id", Allow, "t/r"),
            ("id", Deny, "t/default"),
            ("cat ../x", Allow, "t/r"),
            ("cat ../y", Deny, "t/default"),
            // Deny rules match generously.
            ("rm -rf /", Deny, "t/no-rm-root"),
            ("rm -rf '/'", Deny, "t/no-rm-root"),
            ("rm -rf //", Deny, "t/no-rm-root"),
            ("rm -rf /.", Deny, "t/no-rm-root"),
            ("rm -rf /tmp/..", Deny, "t/no-rm-root"),
            ("rm -rf /etc", Deny, "t/no-rm-root"),
            ("rm -rf /*", Deny, "t/no-rm-root"),
            ("/bin/rm -rf /", Deny, "t/no-rm-root"),
            ("\\rm -rf /", Deny, "t/no-rm-root"),
            ("r\"m\" -rf /", Deny, "t/no-rm-root"),
            ("rm -rf $(echo /)", Deny, "t/no-rm-root"),
            ("rm $(echo -rf /)", Deny, "t/no-rm-root"),
            ("rm -rf `echo /`", Deny, "t/no-rm-root"),
            ("rm -rf /tmp/x", Allow, "t/r"),
            ("rm x", Allow, "t/r"),
            // Approve rules match generously too, before the broader allow.
            ("systemctl restart nginx", Approve, "t/restart"),
            ("systemctl restart", Approve, "t/restart"),
            ("/bin/systemctl restart nginx", Approve, "t/restart"),
            ("systemctl $(echo restart) nginx", Approve, "t/restart"),
            ("systemctl status nginx", Allow, "t/r"),
            (
                "systemctl status nginx; systemctl restart nginx",
                Approve,
                "t/restart",
            ),
            ("systemctl restart nginx; rm -rf /", Deny, "t/no-rm-root"),
        ],
    );
}

#[test]
fn star_alone_matches_any_command() {
    let p = policy(&format!(
        "{HEAD}default = \"deny\"\n[[rule]]\nname = \"all\"\naction = \"approve\"\ncommands = [\"*\"]\n"
    ));
    run_table(
        &p,
        &[
            ("uptime", Approve, "t/all"),
            ("/usr/bin/anything at all", Approve, "t/all"),
            ("sh -c x", Deny, "builtin/shell-code"),
        ],
    );
}

// ---- evasions ------------------------------------------------------------------------------

#[test]
fn builtins_that_evaluate_quoted_text_as_code_are_denied_even_when_allowed() {
    // Every rule allows: only built-in denials deny.
    let p = permissive();
    run_table(
        &p,
        &[
            ("test -f /etc/hostname", Allow, "t/default"),
            // `[` is a bracket glob to this reader: an unknown command name.
            ("[ -d /var/log ]", Deny, "builtin/dynamic-command"),
            ("printf '[%s]\\n' x", Allow, "t/default"),
            ("test -v 'a[$(touch /tmp/x)]'", Deny, "builtin/shell-eval"),
            ("test -v 'a[`id`]'", Deny, "builtin/shell-eval"),
            ("/usr/bin/test -v 'a[$(id)]'", Deny, "builtin/shell-eval"),
            ("printf -v 'a[$(id)]' x", Deny, "builtin/shell-eval"),
            ("printf -vx y", Deny, "builtin/shell-eval"),
            ("unset 'a[$(id)]'", Deny, "builtin/shell-eval"),
            ("read 'a[$(id)]'", Deny, "builtin/shell-eval"),
            ("declare -i n=1", Deny, "builtin/shell-eval"),
            ("export X=1", Deny, "builtin/shell-eval"),
            ("let 'x=a[$(id)]'", Deny, "builtin/shell-eval"),
            ("mapfile 'a[$(id)]'", Deny, "builtin/shell-eval"),
            ("wait -p 'a[$(id)]'", Deny, "builtin/shell-eval"),
            ("trap 'rm -rf ~' EXIT", Deny, "builtin/shell-code"),
            (
                "uptime; trap 'touch /tmp/x' EXIT",
                Deny,
                "builtin/shell-code",
            ),
            ("complete -C 'touch /tmp/x' ls", Deny, "builtin/shell-code"),
            ("bind -x '\"\\C-a\":id'", Deny, "builtin/shell-code"),
            ("enable -f /tmp/x.so x", Deny, "builtin/shell-code"),
            ("fc -s", Deny, "builtin/shell-code"),
            ("alias ls='rm -rf ~'", Deny, "builtin/shell-code"),
            ("hash -p /bin/rm ls", Deny, "builtin/shell-code"),
            ("jobs -x eval 'echo x'", Deny, "builtin/shell-code"),
        ],
    );
}

#[test]
fn evasion_attempts_against_readonly() {
    let p = shipped(READONLY);
    run_table(
        &p,
        &[
            ("uptime", Allow, "ssh-readonly/diagnostics"),
            ("u'p'time", Allow, "ssh-readonly/diagnostics"),
            ("\"uptime\"", Allow, "ssh-readonly/diagnostics"),
            ("uptime 2>&1", Allow, "ssh-readonly/diagnostics"),
            ("uptime >/dev/null", Allow, "ssh-readonly/diagnostics"),
            ("uptime; df -h", Allow, "ssh-readonly/diagnostics"),
            ("uptime | cat", Deny, "ssh-readonly/default"),
            ("uptime; rm -rf /", Deny, "ssh-readonly/default"),
            ("uptime && curl x", Deny, "ssh-readonly/default"),
            ("uptime || curl x", Deny, "ssh-readonly/default"),
            ("uptime & curl x", Deny, "ssh-readonly/default"),
            ("uptime | sh", Deny, "builtin/shell-code"),
            ("uptime | /bin/bash", Deny, "builtin/shell-code"),
            ("uptime\nrm -rf /", Deny, "ssh-readonly/default"),
            ("uptime # \nrm -rf /", Deny, "ssh-readonly/default"),
            ("echo $(rm -rf /)", Deny, "ssh-readonly/default"),
            ("uptime $(rm -rf /)", Deny, "ssh-readonly/default"),
            ("uptime \"$(rm -rf /)\"", Deny, "ssh-readonly/default"),
            ("uptime `rm -rf /`", Deny, "ssh-readonly/default"),
            ("uptime \"`rm -rf /`\"", Deny, "ssh-readonly/default"),
            ("$(uptime) -rf /", Deny, "builtin/dynamic-command"),
            ("`uptime`", Deny, "builtin/dynamic-command"),
            ("$(echo rm) -rf /", Deny, "ssh-readonly/default"),
            ("upti*", Deny, "builtin/dynamic-command"),
            ("upti?e", Deny, "builtin/dynamic-command"),
            ("~/bin/x", Deny, "builtin/dynamic-command"),
            ("uptime > /etc/passwd", Deny, "builtin/redirection"),
            ("uptime 1>/etc/passwd", Deny, "builtin/redirection"),
            ("uptime>/etc/passwd", Deny, "builtin/redirection"),
            ("'uptime;rm'", Deny, "ssh-readonly/default"),
            ("'uptime' ';' 'rm'", Deny, "ssh-readonly/default"),
            ("uptime\\;rm", Deny, "ssh-readonly/default"),
            ("cat${IFS}/etc/passwd", Deny, "builtin/parameter-expansion"),
            ("uptime$IFS;rm", Deny, "builtin/parameter-expansion"),
            ("IFS=x uptime", Deny, "builtin/assignment"),
            ("${PATH}", Deny, "builtin/parameter-expansion"),
            ("${PATH:0:1}bin/rm", Deny, "builtin/parameter-expansion"),
            ("LD_PRELOAD=/x uptime", Deny, "builtin/assignment"),
            ("env LD_PRELOAD=/x uptime", Deny, "ssh-readonly/default"),
            ("sh -c uptime", Deny, "builtin/shell-code"),
            ("sh -c 'uptime; rm -rf /'", Deny, "builtin/shell-code"),
            ("/bin/sh -c uptime", Deny, "builtin/shell-code"),
            ("bash -c uptime", Deny, "builtin/shell-code"),
            ("busybox sh", Deny, "builtin/shell-code"),
            ("eval uptime", Deny, "builtin/shell-code"),
            ("eval 'rm -rf /'", Deny, "builtin/shell-code"),
            ("exec uptime", Deny, "builtin/shell-code"),
            ("command uptime", Deny, "builtin/shell-code"),
            (". /tmp/x", Deny, "builtin/shell-code"),
            ("source /tmp/x", Deny, "builtin/shell-code"),
            ("cat <<EOF\nx\nEOF", Deny, "builtin/here-document"),
            ("cat <(ls)", Deny, "builtin/process-substitution"),
            ("echo 'unbalanced", Deny, "builtin/unbalanced"),
            ("uptime\0; rm -rf /", Deny, "builtin/control-character"),
            ("if true; then uptime; fi", Deny, "builtin/compound"),
            ("(uptime)", Allow, "ssh-readonly/diagnostics"),
            ("(uptime; rm -rf /)", Deny, "ssh-readonly/default"),
            ("{ uptime; rm -rf /; }", Deny, "ssh-readonly/default"),
            ("uptime() { rm; }", Deny, "builtin/compound"),
            ("{uptime,rm}", Deny, "builtin/brace-expansion"),
            ("", Deny, "builtin/empty-command"),
            ("# nothing", Deny, "builtin/empty-command"),
            ("UPTIME", Deny, "ssh-readonly/default"),
            ("/usr/bin/uptime", Deny, "ssh-readonly/default"),
            ("uptime --help", Deny, "ssh-readonly/default"),
            ("hostname evil", Deny, "ssh-readonly/default"),
        ],
    );
}

#[test]
fn reasons_name_the_part_and_the_rule() {
    let p = shipped(READONLY);
    let d = p.decide_exec("uptime; rm -rf /");
    assert_eq!(d.rule, "ssh-readonly/default");
    assert!(d.reason.contains("`rm -rf /`"), "{}", d.reason);
    assert!(d.reason.contains("part 2 of 2"), "{}", d.reason);
    assert!(d.reason.contains("policy ssh-readonly"), "{}", d.reason);

    let d = p.decide_exec("echo $(rm -rf /)");
    assert!(d.reason.contains("part 1 of 2"), "{}", d.reason);

    let d = p.decide_exec("uptime");
    assert_eq!(
        d,
        SshDecision {
            action: Allow,
            rule: "ssh-readonly/diagnostics".into(),
            reason: "policy ssh-readonly rule diagnostics: command `uptime` is allowed".into(),
        }
    );

    let d = p.decide_exec("cat${IFS}/etc/passwd");
    assert!(d.reason.contains("${IFS}"), "{}", d.reason);
    let d = p.decide_exec("LD_PRELOAD=/x uptime");
    assert!(d.reason.contains("LD_PRELOAD=/x"), "{}", d.reason);
    let d = p.decide_exec("uptime > /etc/passwd");
    assert!(d.reason.contains("> /etc/passwd"), "{}", d.reason);
    let d = p.decide_exec("echo 'a b' \"it's\"");
    assert!(d.reason.contains(r"`echo 'a b' 'it'\''s'`"), "{}", d.reason);
    // Control characters never reach a reason raw.
    let d = p.decide_subsystem("x\u{1b}[2J");
    assert!(!d.reason.contains('\u{1b}'), "{}", d.reason);
}

// ---- shipped policies ----------------------------------------------------------------------

#[test]
fn shipped_policies_parse() {
    for (path, name, rules) in [(READONLY, "ssh-readonly", 3), (OPS, "ssh-ops", 7)] {
        let p = shipped(path);
        assert_eq!(p.name(), name);
        assert_eq!(p.rule_count(), rules, "{name}");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(declares_ssh(&text), "{name}");
    }
}

#[test]
fn every_ssh_file_in_policies_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let (mut ssh, mut other) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if declares_ssh(&text) {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            ssh += 1;
        } else {
            // A SQL policy is not an SSH one, and the error says why.
            let e = load(&path).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.contains(" line ") && e.contains("has no `protocol`"),
                "{e}"
            );
            other += 1;
        }
    }
    assert!(ssh >= 2 && other >= 1, "{ssh} {other}");
}

#[test]
fn readonly_policy() {
    let p = shipped(READONLY);
    run_table(
        &p,
        &[
            ("uptime", Allow, "ssh-readonly/diagnostics"),
            ("hostname", Allow, "ssh-readonly/diagnostics"),
            ("uname -a", Allow, "ssh-readonly/diagnostics"),
            ("df -h", Allow, "ssh-readonly/diagnostics"),
            ("df -h /var", Allow, "ssh-readonly/diagnostics"),
            ("free -m", Allow, "ssh-readonly/diagnostics"),
            ("ps aux", Allow, "ssh-readonly/diagnostics"),
            ("journalctl --no-pager", Allow, "ssh-readonly/journal"),
            (
                "journalctl --no-pager --lines=50",
                Allow,
                "ssh-readonly/journal",
            ),
            // `-n` takes an optional value: the next word would be read as an option.
            (
                "journalctl --no-pager -n --vacuum-time=1s",
                Deny,
                "ssh-readonly/default",
            ),
            (
                "journalctl --no-pager -u nginx --lines=50",
                Allow,
                "ssh-readonly/journal",
            ),
            (
                "journalctl --no-pager --since '1 hour ago'",
                Allow,
                "ssh-readonly/journal",
            ),
            (
                "journalctl --no-pager --vacuum-size=1",
                Deny,
                "ssh-readonly/default",
            ),
            (
                "journalctl --no-pager -n 5 --rotate",
                Deny,
                "ssh-readonly/default",
            ),
            ("journalctl", Deny, "ssh-readonly/default"),
            ("cat /var/log/syslog", Allow, "ssh-readonly/logs"),
            (
                "tail -n 20 /var/log/nginx/error.log",
                Allow,
                "ssh-readonly/logs",
            ),
            (
                "cat /var/log/../../etc/shadow",
                Deny,
                "ssh-readonly/default",
            ),
            ("cat /etc/shadow", Deny, "ssh-readonly/default"),
            ("ls -l /var/log", Allow, "ssh-readonly/logs"),
            ("rm -rf /", Deny, "ssh-readonly/default"),
            ("systemctl restart nginx", Deny, "ssh-readonly/default"),
            ("reboot", Deny, "ssh-readonly/default"),
            ("curl http://example.com", Deny, "ssh-readonly/default"),
            ("scp -t /tmp/x", Deny, "ssh-readonly/sftp-read-only"),
            ("scp -f /var/log/syslog", Allow, "ssh-readonly/sftp"),
            ("scp -f /etc/shadow", Deny, "ssh-readonly/sftp-paths"),
        ],
    );
    let d = p.decide_shell();
    assert_eq!((d.action, d.rule.as_str()), (Deny, "ssh-readonly/shell"));
    let d = p.decide_subsystem("sftp");
    assert_eq!((d.action, d.rule.as_str()), (Allow, "ssh-readonly/sftp"));
    for (op, path, action, rule) in [
        (
            FileAccess::Read,
            "/var/log/syslog",
            Allow,
            "ssh-readonly/sftp",
        ),
        (FileAccess::List, "/var/log", Allow, "ssh-readonly/sftp"),
        (FileAccess::Read, "/tmp/x", Allow, "ssh-readonly/sftp"),
        (
            FileAccess::Write,
            "/tmp/x",
            Deny,
            "ssh-readonly/sftp-read-only",
        ),
        (
            FileAccess::Read,
            "/etc/shadow",
            Deny,
            "ssh-readonly/sftp-paths",
        ),
        (FileAccess::List, "/", Deny, "ssh-readonly/sftp-paths"),
    ] {
        let d = p.decide_file(op, path);
        assert_eq!(
            (d.action, d.rule.as_str()),
            (action, rule),
            "{op:?} {path}: {}",
            d.reason
        );
    }
}

#[test]
fn writes_that_would_run_code_at_the_next_login_are_denied_even_when_allowed() {
    // sftp allowed, read-write, no path limits: only built-in denials deny.
    let p = permissive();
    for (path, action) in [
        ("/srv/app/x.tar", Allow),
        ("/home/deploy/app/.env", Allow),
        ("/home/deploy/bashrc.txt", Allow),
        ("/home/deploy/.bashrc", Deny),
        (".bashrc", Deny),
        ("./x/../.profile", Deny),
        ("/root/.zshenv", Deny),
        ("/home/deploy/.ssh/authorized_keys", Deny),
        (".ssh/rc", Deny),
        ("/home/deploy//.ssh", Deny),
        ("/etc/profile.d/x.sh", Deny),
        ("/etc/profile", Deny),
        ("/etc/ld.so.preload", Deny),
        ("/etc/ssh/sshd_config", Deny),
        ("/etc/profiles.txt", Allow),
        ("/tmp/../etc/bash.bashrc", Deny),
        ("/home/deploy/.bash_aliases", Deny),
        ("/etc/update-motd.d/99-x", Deny),
        ("/etc/pam.d/sshd", Deny),
        ("/home/deploy/.config/systemd/user/x.service", Deny),
        ("/home/deploy/.config/app.toml", Allow),
        ("/home/deploy/.gitconfig", Deny),
        ("/srv/app/.git/config", Deny),
        ("/srv/app/.git/hooks/post-checkout", Deny),
        ("/srv/app/.git", Deny),
        ("/srv/app/.git/objects/ab/cdef", Allow),
        ("/home/deploy/.config/nvim/init.lua", Deny),
        ("/home/deploy/.vimrc", Deny),
        ("/var/mail/.forward", Deny),
        ("/srv/app/vimrc.txt", Allow),
        // Other names for the same files, and their directories (as a path,
        // a rename or a symlink target).
        ("/proc/self/root/etc/profile.d/x.sh", Deny),
        ("/proc/self/cwd/x", Deny),
        ("/etc", Deny),
        ("/home", Deny),
        ("/home/deploy", Deny),
        ("/root/", Deny),
        ("/", Deny),
        ("..", Deny),
        ("../other/x", Deny),
        ("/srv/app", Allow),
    ] {
        let d = p.decide_file(FileAccess::Write, path);
        let want = if action == Allow {
            "t/sftp"
        } else {
            "builtin/startup-file"
        };
        assert_eq!(
            (d.action, d.rule.as_str()),
            (action, want),
            "{path}: {}",
            d.reason
        );
        // Reading them stays the policy's business.
        assert_eq!(
            p.decide_file(FileAccess::Read, path).action,
            Allow,
            "{path}"
        );
    }
    // Legacy scp: a file named by the path, or an upload into a directory
    // whose file names only the client knows.
    run_table(
        &p,
        &[
            ("scp -t /srv/app/x.tar", Allow, "t/sftp"),
            ("scp -t /home/deploy/.bashrc", Deny, "builtin/startup-file"),
            ("scp -t .", Deny, "builtin/startup-file"),
            ("scp -t /root", Deny, "builtin/startup-file"),
            ("scp -r -t /home/deploy", Deny, "builtin/startup-file"),
            ("scp -r -t /srv/app", Allow, "t/sftp"),
            ("scp -f /home/deploy/.bashrc", Allow, "t/sftp"),
            ("scp -r -t /home", Deny, "builtin/startup-file"),
            ("scp -t /etc", Deny, "builtin/startup-file"),
            ("scp -r -t /", Deny, "builtin/startup-file"),
            ("scp -r -t ..", Deny, "builtin/startup-file"),
            ("scp -t ../deploy", Deny, "builtin/startup-file"),
            ("scp -t /proc/self/cwd", Deny, "builtin/startup-file"),
            ("scp -t app", Deny, "builtin/startup-file"),
        ],
    );
}

#[test]
fn ops_policy() {
    let p = shipped(OPS);
    run_table(
        &p,
        &[
            ("uptime", Allow, "ssh-ops/diagnostics"),
            ("true", Allow, "ssh-ops/diagnostics"),
            ("df -h", Allow, "ssh-ops/diagnostics"),
            ("ls -la /etc", Allow, "ssh-ops/diagnostics"),
            ("systemctl status nginx", Allow, "ssh-ops/services"),
            ("systemctl is-active nginx", Allow, "ssh-ops/services"),
            (
                "systemctl status --host=root@db",
                Deny,
                "ssh-ops/unit-options",
            ),
            ("systemctl status --root=/x", Deny, "ssh-ops/unit-options"),
            ("systemctl status -H db", Deny, "ssh-ops/default"),
            (
                "systemctl list-units --type=service",
                Allow,
                "ssh-ops/services",
            ),
            ("systemctl restart nginx", Approve, "ssh-ops/restart"),
            ("systemctl reload nginx.service", Approve, "ssh-ops/restart"),
            ("sudo systemctl restart nginx", Deny, "ssh-ops/default"),
            ("reboot", Approve, "ssh-ops/restart"),
            ("systemctl reboot", Approve, "ssh-ops/restart"),
            ("/sbin/reboot", Approve, "ssh-ops/restart"),
            ("reboot -f", Deny, "ssh-ops/default"),
            ("systemctl stop nginx", Deny, "ssh-ops/default"),
            (
                "systemctl restart nginx; uptime",
                Approve,
                "ssh-ops/restart",
            ),
            (
                "systemctl restart nginx && rm -rf /",
                Deny,
                "ssh-ops/destructive",
            ),
            ("journalctl --no-pager -u nginx", Allow, "ssh-ops/logs"),
            ("grep -i -e error /var/log/syslog", Allow, "ssh-ops/logs"),
            // An option in the pattern's place (`-r` would read the home directory).
            ("grep -rv /var/log/zzz", Deny, "ssh-ops/default"),
            (
                "grep --file=/etc/shadow /var/log/syslog",
                Deny,
                "ssh-ops/default",
            ),
            ("rm -rf /", Deny, "ssh-ops/destructive"),
            ("rm -fr /", Deny, "ssh-ops/destructive"),
            ("rm -rf /*", Deny, "ssh-ops/destructive"),
            ("rm -rf /usr", Deny, "ssh-ops/destructive"),
            ("rm -rf //", Deny, "ssh-ops/destructive"),
            ("/bin/rm -rf /", Deny, "ssh-ops/destructive"),
            ("rm -rf /tmp/x", Deny, "ssh-ops/default"),
            ("mkfs.ext4 /dev/sda1", Deny, "ssh-ops/destructive"),
            ("dd if=/dev/zero of=/dev/sda", Deny, "ssh-ops/destructive"),
            ("shutdown -h now", Deny, "ssh-ops/destructive"),
            ("systemctl poweroff", Deny, "ssh-ops/destructive"),
            ("bash", Deny, "builtin/shell-code"),
            ("scp -t /srv/app/x.tar", Allow, "ssh-ops/sftp"),
            ("scp -r -t /srv/app", Allow, "ssh-ops/sftp"),
            ("scp -t /etc/passwd", Deny, "ssh-ops/sftp-paths"),
        ],
    );
    let d = p.decide_shell();
    assert_eq!((d.action, d.rule.as_str()), (Allow, "ssh-ops/shell"));
    let d = p.decide_typed_line("systemctl restart nginx");
    assert_eq!((d.action, d.rule.as_str()), (Approve, "ssh-ops/restart"));
    for (op, path, action, rule) in [
        (FileAccess::Write, "/tmp/x", Allow, "ssh-ops/sftp"),
        (
            FileAccess::Write,
            "/srv/app/data/x.json",
            Allow,
            "ssh-ops/sftp",
        ),
        (FileAccess::Read, "/srv", Allow, "ssh-ops/sftp"),
        (FileAccess::Write, "/srv", Deny, "ssh-ops/sftp-paths"),
        (
            FileAccess::Write,
            "/etc/cron.d/x",
            Deny,
            "ssh-ops/sftp-paths",
        ),
        (
            FileAccess::Read,
            "/var/log/syslog",
            Deny,
            "ssh-ops/sftp-paths",
        ),
    ] {
        let d = p.decide_file(op, path);
        assert_eq!(
            (d.action, d.rule.as_str()),
            (action, rule),
            "{op:?} {path}: {}",
            d.reason
        );
    }
}

// ---- shell, subsystems, typed lines --------------------------------------------------------

#[test]
fn shell_and_subsystems() {
    let none = policy(&format!("{HEAD}default = \"allow\"\n"));
    let d = none.decide_shell();
    assert_eq!((d.action, d.rule.as_str()), (Deny, "t/shell"));
    assert!(d.reason.contains("no [shell] section"), "{}", d.reason);
    let d = none.decide_subsystem("sftp");
    assert_eq!((d.action, d.rule.as_str()), (Deny, "t/sftp"));
    let d = none.decide_file(FileAccess::Read, "/tmp/x");
    assert_eq!((d.action, d.rule.as_str()), (Deny, "t/sftp"));
    assert_eq!(none.decide_exec("scp -f /tmp/x").rule, "t/sftp");

    let approve = policy(&format!(
        "{HEAD}default = \"deny\"\n[shell]\naction = \"approve\"\n[sftp]\naction = \"approve\"\n"
    ));
    assert_eq!(approve.decide_shell().action, Approve);
    assert_eq!(approve.decide_subsystem("sftp").action, Approve);
    // Approval is per session; files in an approved session are allowed by path.
    assert_eq!(approve.decide_file(FileAccess::Write, "/x").action, Allow);
    // Legacy scp is one exec request: it needs the approval itself.
    let d = approve.decide_exec("scp -t /x");
    assert_eq!((d.action, d.rule.as_str()), (Approve, "t/sftp"));

    let deny = policy(&format!(
        "{HEAD}default = \"allow\"\n[shell]\naction = \"deny\"\n[sftp]\naction = \"deny\"\n"
    ));
    assert_eq!(deny.decide_shell().action, Deny);
    assert_eq!(deny.decide_subsystem("sftp").action, Deny);
    assert_eq!(deny.decide_file(FileAccess::Read, "/x").rule, "t/sftp");
    assert_eq!(deny.decide_exec("scp -f /x").action, Deny);

    let p = permissive();
    for name in ["", "SFTP", "sftp ", "netconf", "x11", "sftp\0"] {
        let d = p.decide_subsystem(name);
        assert_eq!(
            (d.action, d.rule.as_str()),
            (Deny, "builtin/subsystem"),
            "{name:?}"
        );
    }
}

#[test]
fn typed_lines() {
    let p = shipped(OPS);
    for (line, action, rule) in [
        ("", Allow, "builtin/empty-line"),
        ("   ", Allow, "builtin/empty-line"),
        ("# note", Allow, "builtin/empty-line"),
        ("uptime", Allow, "ssh-ops/diagnostics"),
        ("uptime\r", Allow, "ssh-ops/diagnostics"),
        ("uptime\n", Allow, "ssh-ops/diagnostics"),
        ("rm -rf /", Deny, "ssh-ops/destructive"),
        ("uptime; rm -rf /", Deny, "ssh-ops/destructive"),
        ("echo 'open", Deny, "builtin/unbalanced"),
        ("cd /tmp", Deny, "ssh-ops/default"),
        ("vi /etc/x", Deny, "ssh-ops/default"),
        ("!!", Deny, "builtin/history-expansion"),
        ("!rm", Deny, "builtin/history-expansion"),
        ("ls !$", Deny, "builtin/history-expansion"),
        ("ls \"!-2\"", Deny, "builtin/history-expansion"),
        ("ls '!x'", Allow, "ssh-ops/diagnostics"),
        ("ls \\!x", Allow, "ssh-ops/diagnostics"),
        ("ls ! x", Allow, "ssh-ops/diagnostics"),
    ] {
        let d = p.decide_typed_line(line);
        assert_eq!(
            (d.action, d.rule.as_str()),
            (action, rule),
            "{line:?}: {}",
            d.reason
        );
    }
}

// ---- legacy scp ------------------------------------------------------------------------------

#[test]
fn legacy_scp_is_judged_by_sftp_section() {
    let p = policy(&format!(
        "{HEAD}default = \"deny\"\n[[rule]]\nname = \"t\"\naction = \"allow\"\ncommands = [\"true\"]\n[sftp]\naction = \"allow\"\npaths = [\"/srv/**\", \"/data/*.csv\"]\n"
    ));
    run_table(
        &p,
        &[
            ("scp -t /srv/x", Allow, "t/sftp"),
            ("scp -t /srv", Allow, "t/sftp"),
            ("scp -t /srv/", Allow, "t/sftp"),
            ("scp -v -p -t /srv/x", Allow, "t/sftp"),
            ("scp -d -t /srv/dir", Allow, "t/sftp"),
            ("scp -r -t /srv/dir", Allow, "t/sftp"),
            ("scp -r -p -d -t -- /srv/-x", Allow, "t/sftp"),
            ("scp -rt /srv/dir", Allow, "t/sftp"),
            ("scp -t '/srv/a b'", Allow, "t/sftp"),
            ("scp -t /srv/../etc/passwd", Deny, "t/sftp-paths"),
            ("scp -t /etc/passwd", Deny, "t/sftp-paths"),
            ("scp -t .", Deny, "t/sftp-paths"),
            ("scp -t x", Deny, "t/sftp-paths"),
            ("scp -t /data/a.csv", Allow, "t/sftp"),
            ("scp -r -t /data/a.csv", Deny, "t/sftp-paths"),
            ("scp -d -t /data", Deny, "t/sftp-paths"),
            ("scp -f /srv/x", Allow, "t/sftp"),
            ("scp -f /data/a.csv", Allow, "t/sftp"),
            ("scp -f /data/a.txt", Deny, "t/sftp-paths"),
            ("scp -r -f /srv/dir", Allow, "t/sftp"),
            ("scp -r -f /data/a.csv", Deny, "t/sftp-paths"),
            ("scp -f /etc/shadow", Deny, "t/sftp-paths"),
            ("scp -f '/srv/*.log'", Allow, "t/sftp"),
            ("scp -f /srv/*.log", Deny, "builtin/scp-path"),
            ("scp -f ~/x", Deny, "builtin/scp-path"),
            ("scp -f $(true)", Deny, "builtin/scp-path"),
            ("scp -f $(cat /x)", Deny, "t/default"),
            ("scp /srv/x -t", Allow, "t/sftp"),
            ("scp -t -f /srv/x", Deny, "builtin/scp"),
            ("scp -t /srv/x /srv/y", Deny, "builtin/scp"),
            ("scp -t", Deny, "builtin/scp"),
            ("scp -S /tmp/evil -t /srv/x", Deny, "builtin/scp"),
            ("scp -o ProxyCommand=x -t /srv/x", Deny, "builtin/scp"),
            ("scp -t /srv/x; rm -rf /", Deny, "t/default"),
            ("scp -t /srv/x > /etc/x", Deny, "builtin/redirection"),
            // Not server mode: an ordinary command for the rules.
            ("scp a b", Deny, "t/default"),
            ("/usr/bin/scp -t /srv/x", Deny, "t/default"),
        ],
    );
    let ro = policy(&format!(
        "{HEAD}default = \"deny\"\n[sftp]\naction = \"allow\"\nread_only = true\n"
    ));
    run_table(
        &ro,
        &[
            ("scp -f /anything", Allow, "t/sftp"),
            ("scp -f relative", Allow, "t/sftp"),
            ("scp -t /anything", Deny, "t/sftp-read-only"),
        ],
    );
}

// ---- file decisions --------------------------------------------------------------------------

#[test]
fn file_decisions() {
    let p = policy(&format!(
        "{HEAD}default = \"deny\"\n[sftp]\naction = \"allow\"\npaths = [\"/var/log/**\", \"/home/agent/*.txt\", \"/srv/*/upload/**\"]\n"
    ));
    use FileAccess::{List, Read, Write};
    let cases: &[(FileAccess, &str, Action, &str)] = &[
        (Read, "/var/log/syslog", Allow, "t/sftp"),
        (Read, "/var/log/nginx/access.log", Allow, "t/sftp"),
        (List, "/var/log", Allow, "t/sftp"),
        (List, "/var/log/", Allow, "t/sftp"),
        (Read, "/var/log", Allow, "t/sftp"),
        (Write, "/var/log", Deny, "t/sftp-paths"),
        (Write, "/var/log/x", Allow, "t/sftp"),
        (Read, "/var//log/./syslog", Allow, "t/sftp"),
        (Read, "/var/log/../../etc/shadow", Deny, "t/sftp-paths"),
        (Read, "/var/log/nginx/../syslog", Allow, "t/sftp"),
        (Read, "/../var/log/syslog", Allow, "t/sftp"),
        (Read, "/var/logs/x", Deny, "t/sftp-paths"),
        (Read, "/etc/passwd", Deny, "t/sftp-paths"),
        (List, "/", Deny, "t/sftp-paths"),
        (Read, "var/log/syslog", Deny, "t/sftp-paths"),
        (Read, "", Deny, "t/sftp-paths"),
        (Read, ".", Deny, "t/sftp-paths"),
        (Read, "/home/agent/notes.txt", Allow, "t/sftp"),
        (Read, "/home/agent/sub/notes.txt", Deny, "t/sftp-paths"),
        (
            Read,
            "/home/agent/.ssh/authorized_keys",
            Deny,
            "t/sftp-paths",
        ),
        (Write, "/srv/app/upload/x/y", Allow, "t/sftp"),
        (List, "/srv/app/upload", Allow, "t/sftp"),
        (Write, "/srv/app/other", Deny, "t/sftp-paths"),
        (Read, "/var/log/x\0y", Deny, "builtin/bad-path"),
    ];
    let mut failures = Vec::new();
    for (op, path, action, rule) in cases {
        let d = p.decide_file(*op, path);
        if d.action != *action || d.rule != *rule {
            failures.push(format!(
                "{op:?} {path:?}\n    want {action} {rule}\n    got  {} {} — {}",
                d.action, d.rule, d.reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let long = format!("/var/log/{}", "a".repeat(MAX_PATH));
    assert_eq!(p.decide_file(Read, &long).rule, "builtin/bad-path");

    let d = p.decide_file(Read, "/etc/passwd");
    assert!(d.reason.contains("/var/log/**"), "{}", d.reason);
    let d = p.decide_file(Read, "/var/log/../../etc/shadow");
    assert!(
        d.reason.contains("normalized `/etc/shadow`"),
        "{}",
        d.reason
    );

    // No paths: anything, relative too.
    let any = policy(&format!(
        "{HEAD}default = \"deny\"\n[sftp]\naction = \"allow\"\n"
    ));
    assert_eq!(any.decide_file(Write, "relative").action, Allow);
    assert_eq!(any.decide_file(Write, "/etc/passwd").action, Allow);
    let empty = policy(&format!(
        "{HEAD}default = \"deny\"\n[sftp]\naction = \"allow\"\npaths = []\n"
    ));
    assert_eq!(empty.decide_file(Read, "/etc/passwd").action, Allow);

    // Read-only comes before paths.
    let ro = policy(&format!(
        "{HEAD}default = \"deny\"\n[sftp]\naction = \"allow\"\nread_only = true\npaths = [\"/tmp/**\"]\n"
    ));
    assert_eq!(ro.decide_file(Write, "/tmp/x").rule, "t/sftp-read-only");
    assert_eq!(ro.decide_file(Write, "/etc/x").rule, "t/sftp-read-only");
    assert_eq!(ro.decide_file(List, "/tmp").action, Allow);
    // `/**` covers everything.
    let all = policy(&format!(
        "{HEAD}default = \"deny\"\n[sftp]\naction = \"allow\"\npaths = [\"/**\"]\n"
    ));
    assert_eq!(all.decide_file(List, "/").action, Allow);
    assert_eq!(all.decide_file(Write, "/etc/x").action, Allow);
    assert_eq!(all.decide_file(Write, "x").action, Deny);
}

#[test]
fn normalize_paths() {
    for (path, want) in [
        ("/", "/"),
        ("//", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b"),
        ("/a//b/./c", "/a/b/c"),
        ("/a/../b", "/b"),
        ("/../..", "/"),
        ("/a/b/../../..", "/"),
        ("a/../..", ".."),
        ("../a", "../a"),
        ("./a", "a"),
        ("", "."),
        (".", "."),
    ] {
        assert_eq!(normalize(path), want, "{path:?}");
    }
}

// ---- policy files ------------------------------------------------------------------------------

#[test]
fn policy_file_errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        // Unknown keys, everywhere.
        ("[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\nextra = 1\n", "line 5"),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"uptime\"]\nkinds = [\"select\"]\n",
            "line 10",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[shell]\naction = \"allow\"\nrecord = true\n",
            "line 7",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[sftp]\naction = \"allow\"\nreadonly = true\n",
            "line 7",
        ),
        ("[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[mask]\ncolumn = \"x\"\n", "line 5"),
        // Bad values.
        ("[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"maybe\"\n", "line 4"),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[shell]\naction = \"yes\"\n",
            "line 6",
        ),
        ("[policy]\nname = \"t\"\nprotocol = \"postgres\"\ndefault = \"deny\"\n", "line 3"),
        ("[policy]\nname = \"t\"\ndefault = \"deny\"\n", "line 1"),
        ("[policy]\nname = \"other\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n", "line 2"),
        ("[policy]\nname = \"t t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n", "line 2"),
        ("[policy]\nname = \"t\"\nprotocol = \"ssh\"\n", "missing field `default`"),
        ("[policy\nname = \"t\"\n", "line 1"),
        // Rules.
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"default\"\naction = \"allow\"\ncommands = [\"uptime\"]\n",
            "line 7",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"sftp-paths\"\naction = \"allow\"\ncommands = [\"uptime\"]\n",
            "reserved",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"Big\"\naction = \"allow\"\ncommands = [\"uptime\"]\n",
            "line 7",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"uptime\"]\n\n[[rule]]\nname = \"r\"\naction = \"deny\"\ncommands = [\"df\"]\n",
            "line 12: duplicate rule name `r` (first used on line 7)",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\n",
            "missing field `commands`",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = []\n",
            "line 9: `commands` is an empty list",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\n  \"uptime\",\n  \"echo $HOME\",\n]\n",
            "line 11: command pattern `echo $HOME`",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"uptime; rm\"]\n",
            "line 9: command pattern",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"bash -c *\"]\n",
            "always denied",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"'' x\"]\n",
            "command name is empty",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"   \"]\n",
            "line 9",
        ),
        // Paths.
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[sftp]\naction = \"allow\"\npaths = [\"var/log/**\"]\n",
            "line 7: path pattern `var/log/**`: must be an absolute path",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[sftp]\naction = \"allow\"\npaths = [\n  \"/tmp/**\",\n  \"/var/log/../**\",\n]\n",
            "line 9",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[sftp]\naction = \"allow\"\npaths = [\"/tmp/\"]\n",
            "normalized",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[sftp]\naction = \"allow\"\npaths = [\"/tmp//x\"]\n",
            "normalized",
        ),
        (
            "[policy]\nname = \"t\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n[sftp]\nread_only = true\n",
            "missing field `action`",
        ),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let e = parse_err(text);
        if !e.contains(want) || !e.starts_with("policies/t.toml") {
            failures.push(format!("{text}\n    want …{want}…\n    got  {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn load_reports_a_missing_file() {
    let e = load(Path::new("/nonexistent/ssh-x.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("/nonexistent/ssh-x.toml") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn declares_ssh_peeks_at_the_protocol() {
    assert!(declares_ssh("[policy]\nprotocol = \"ssh\"\n"));
    assert!(!declares_ssh("[policy]\nprotocol = \"postgres\"\n"));
    assert!(!declares_ssh("[policy]\nname = \"x\"\n"));
    assert!(!declares_ssh("protocol = \"ssh\"\n"));
    assert!(!declares_ssh("[policy\n"));
}

#[test]
fn decisions_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SshPolicy>();
    check::<SshDecision>();
}

/// Allowed file-writing commands cannot plant startup files: their write targets go through
/// the sftp write check, even under `default = "allow"`.
#[test]
fn file_writing_commands_cannot_write_startup_files() {
    const S: &str = "builtin/startup-file";
    let p = permissive();
    run_table(
        &p,
        &[
            // cp, mv, install, ln: the target, and each source's name inside it.
            ("cp /tmp/x ~/.bashrc", Deny, S),
            ("cp /tmp/x .bashrc", Deny, S),
            ("cp /tmp/.bashrc ~", Deny, S),
            ("cp /tmp/.bashrc /home/deploy/", Deny, S),
            ("cp -t ~ /tmp/.profile", Deny, S),
            ("cp /tmp/a -t/home/deploy/.ssh", Deny, S),
            ("cp --target-directory=/home/deploy/.ssh /tmp/k", Deny, S),
            ("cp --target /root /tmp/.zshrc", Deny, S),
            ("cp /tmp/k /home/deploy/.ssh/authorized_keys", Deny, S),
            ("cp /tmp/k /home/deploy/.ssh/authorized_keys -v", Deny, S),
            ("cp -- /tmp/k -.ssh/../.bashrc", Deny, S),
            ("cp -rT /tmp/payload /home/deploy/.config", Deny, S),
            ("cp -r /tmp/payload/. /home/deploy", Deny, S),
            ("cp -a /tmp/systemd ~/.config/", Deny, S),
            ("cp /tmp/prof* /etc/", Deny, S),
            ("cp /tmp/.b* ~/sub/", Deny, S),
            ("cp /tmp/$(id -un) ~/x", Deny, S),
            ("cp /tmp/x $(pwd)", Deny, S),
            ("mv /tmp/x .ssh/authorized_keys", Deny, S),
            ("mv ~/.bashrc /tmp/old", Deny, S),
            ("install -m 0644 /tmp/x /etc/profile.d/x.sh", Deny, S),
            ("install -d /home/deploy/.config/systemd/user", Deny, S),
            ("ln -s /tmp/evil .bashrc", Deny, S),
            ("ln -s /home/deploy/.bashrc /tmp/x", Deny, S),
            ("ln -s /tmp/.profile", Deny, S),
            // tee, dd, sed -i.
            ("tee -a .ssh/authorized_keys", Deny, S),
            ("tee /tmp/ok /home/deploy/.profile", Deny, S),
            ("dd if=/tmp/x of=/home/deploy/.bashrc", Deny, S),
            ("sed -i s/a/b/ ~/.bashrc", Deny, S),
            ("sed -i.bak -e s/a/b/ .profile", Deny, S),
            ("sed -ni s/a/b/p /tmp/x .zshenv", Deny, S),
            ("sed --in-place s/a/b/ /etc/profile", Deny, S),
            // Archives: into the home directory, names rewritten, or the archive file itself.
            ("tar xf /tmp/a.tar", Deny, S),
            ("tar -xzf /tmp/a.tgz", Deny, S),
            ("tar --extract --file=/tmp/a.tar", Deny, S),
            ("tar -C /home/deploy -xf /tmp/a.tar", Deny, S),
            ("tar xfC /tmp/a.tar /home/deploy", Deny, S),
            ("tar -xf /tmp/a.tar -C /srv/app --transform s/x/y/", Deny, S),
            ("tar -xPf /tmp/a.tar -C /srv/app", Deny, S),
            ("tar -xf /tmp/a.tar -C /srv/app --to-command=sh", Deny, S),
            ("tar -xf /tmp/a.tar -C ~/.config", Deny, S),
            ("tar cf ~/.bashrc /tmp/x", Deny, S),
            ("unzip /tmp/a.zip", Deny, S),
            ("unzip /tmp/a.zip -d ~", Deny, S),
            ("unzip -: /tmp/a.zip -d /srv/app", Deny, S),
            ("cpio -idv", Deny, S),
            // Downloads.
            ("curl -o ~/.bashrc http://x/y", Deny, S),
            ("curl -sSo.profile http://x/y", Deny, S),
            ("curl -O http://x/.bashrc", Deny, S),
            ("curl -J -O http://x/y", Deny, S),
            ("curl -K /tmp/opts http://x/y", Deny, S),
            ("wget http://x/.profile", Deny, S),
            ("wget -O .bashrc http://x/y", Deny, S),
            ("wget -r http://x/", Deny, S),
            // Files that make an allowed program run commands.
            ("tee -a /home/deploy/.gitconfig", Deny, S),
            ("cp /tmp/x /srv/app/.git/config", Deny, S),
            ("cp /tmp/x /srv/app/.git/hooks/pre-commit", Deny, S),
            ("cp -r /tmp/evil /srv/app/.git", Deny, S),
            ("cp /tmp/x ~/.config/git/config", Deny, S),
            ("cp /tmp/x .psqlrc", Deny, S),
            ("tee .forward", Deny, S),
            ("cp /tmp/x /srv/app/.git/objects/ab/cd", Allow, "t/default"),
            // A copy target that names a startup file where homes live, and bare
            // repositories' config and hooks.
            ("cp /tmp/evil /.bashrc", Deny, S),
            ("cp /tmp/evil /home/.profile", Deny, S),
            ("cp /tmp/evil /srv/repo.git/hooks/post-update", Deny, S),
            ("cp /tmp/evil /srv/repo.git/config", Deny, S),
            ("cp /tmp/a /srv/repo.git/objects/ab/cd", Allow, "t/default"),
            // Abbreviated long options, --parents, rsync.
            ("cp --no-t -r /tmp/payload ~", Deny, S),
            ("cp --no-target-dir -r /tmp/payload /home/deploy", Deny, S),
            ("sed --in-pl s/a/b/ .profile", Deny, S),
            ("cp --parents .ssh/authorized_keys /home/deploy", Deny, S),
            ("cp --par /tmp/.bashrc /srv/app", Deny, S),
            ("rsync -a /tmp/payload/ /home/deploy/", Deny, S),
            ("rsync -a /tmp/payload/ ~", Deny, S),
            ("rsync -av /tmp/.bashrc /srv/app/", Deny, S),
            ("rsync -a /tmp/systemd ~/.config", Deny, S),
            ("rsync -e 'ssh -o ProxyCommand=x' /tmp/a b:/c", Deny, S),
            (
                "rsync --log-file=/home/deploy/.profile /tmp/a /srv/b",
                Deny,
                S,
            ),
            ("rsync -a /tmp/payload/ /srv/app/", Allow, "t/default"),
            ("cp --parents app/conf/x.toml /srv", Allow, "t/default"),
            // After a `cd`, relative targets are relative to somewhere only the server knows.
            ("cd .ssh && cp /tmp/k authorized_keys", Deny, S),
            ("cd /srv && tee x", Deny, S),
            // Ordinary writes stay the policy's business.
            ("cp /tmp/x /srv/app/", Allow, "t/default"),
            ("cp /tmp/x ~", Allow, "t/default"),
            ("cp /tmp/x .", Allow, "t/default"),
            ("cp /var/log/*.log /tmp/backup/", Allow, "t/default"),
            ("cp /var/log/*.log ~/logs/", Allow, "t/default"),
            ("cp -r /tmp/payload /srv/app", Allow, "t/default"),
            // A directory target would get a `.bashrc` (any directory may be an account's
            // home); -T says the target is the file.
            ("cp ~/.bashrc /tmp/bashrc.bak", Deny, S),
            ("cp -T ~/.bashrc /tmp/bashrc.bak", Allow, "t/default"),
            ("mv /tmp/a /tmp/b", Allow, "t/default"),
            ("ln -s /srv/app/current /srv/app/live", Allow, "t/default"),
            (
                "install -m 0755 /tmp/tool /usr/local/bin/tool",
                Allow,
                "t/default",
            ),
            ("tee /tmp/out", Allow, "t/default"),
            (
                "dd if=/dev/zero of=/tmp/blob bs=1M count=1",
                Allow,
                "t/default",
            ),
            ("sed -n s/a/b/p ~/.bashrc", Allow, "t/default"),
            ("sed -i s/a/b/ /srv/app/config.ini", Allow, "t/default"),
            ("tar -xzf /tmp/a.tgz -C /srv/app", Allow, "t/default"),
            (
                "tar czf /tmp/backup.tgz -C /home/deploy app",
                Allow,
                "t/default",
            ),
            ("tar tf /tmp/a.tar", Allow, "t/default"),
            ("unzip -l /tmp/a.zip", Allow, "t/default"),
            ("unzip /tmp/a.zip -d /srv/app", Allow, "t/default"),
            ("curl -fsS http://x/health", Allow, "t/default"),
            ("curl -o /tmp/y http://x/y", Allow, "t/default"),
            (
                "curl -O --output-dir /tmp http://x/a.tgz",
                Allow,
                "t/default",
            ),
            ("wget -O /tmp/y http://x/y", Allow, "t/default"),
            ("wget -P /tmp http://x/a.tgz", Allow, "t/default"),
            ("cd /srv/app && ls", Allow, "t/default"),
            ("cd /srv/app && cp /tmp/x /srv/app/y", Allow, "t/default"),
        ],
    );
}
