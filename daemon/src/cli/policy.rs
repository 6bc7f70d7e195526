//! `cordon policy check FILE...`: compiles policy files locally (no daemon needed), prints
//! `ok <file> (<n> rules)` for each good one and `<file> line <n>: <problem>` for each bad one.
//! SQL and SSH policy files are both accepted: `[policy] protocol = "ssh"` picks the SSH format.

use std::path::{Path, PathBuf};

use crate::policy::ssh;

pub fn check(files: &[PathBuf]) -> anyhow::Result<()> {
    if files.is_empty() {
        anyhow::bail!("no policy files given");
    }
    let mut bad = 0usize;
    for file in files {
        match compile(file) {
            Ok((kind, n)) => {
                let rules = if n == 1 { "rule" } else { "rules" };
                println!("ok {} ({kind}{n} {rules})", file.display());
            }
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    match bad {
        0 => Ok(()),
        1 => anyhow::bail!("1 policy file is invalid"),
        n => anyhow::bail!("{n} policy files are invalid"),
    }
}

/// The kind label for the output (`""` for SQL, as before SSH policies existed) and the number
/// of rules.
fn compile(file: &Path) -> Result<(&'static str, usize), crate::policy::PolicyError> {
    // A file that cannot be read goes to the SQL loader, which reports the read error.
    let text = std::fs::read_to_string(file).ok();
    match text {
        Some(text) if ssh::declares_ssh(&text) => {
            ssh::parse(file, &text).map(|p| ("ssh, ", p.rule_count()))
        }
        Some(text) => crate::policy::parse(file, &text).map(|p| ("", p.rule_count())),
        None => crate::policy::load(file).map(|p| ("", p.rule_count())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_good_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "[policy]\nname = \"good\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\nkinds = [\"select\"]\n",
        )
        .unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[policy]\nname = \"bad\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\nkinds = [\"selec\"]\n",
        )
        .unwrap();
        assert!(check(std::slice::from_ref(&good)).is_ok());
        let err = check(&[good, bad]).unwrap_err();
        assert!(
            err.to_string().contains("1 policy file is invalid"),
            "{err}"
        );
        assert!(check(&[]).is_err());
    }

    #[test]
    fn check_takes_ssh_and_sql_policies() {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let files: Vec<PathBuf> = ["ssh-readonly", "ssh-ops", "pg-readonly", "pg-app", "pg-dba"]
            .iter()
            .map(|n| Path::new(shipped).join(format!("{n}.toml")))
            .collect();
        check(&files).unwrap();
        assert_eq!(compile(&files[0]).unwrap(), ("ssh, ", 3));
        assert_eq!(compile(&files[2]).unwrap().0, "");

        let dir = tempfile::tempdir().unwrap();
        // protocol = "postgres" is a SQL policy.
        let pg = dir.path().join("pg.toml");
        std::fs::write(
            &pg,
            "[policy]\nname = \"pg\"\nprotocol = \"postgres\"\ndefault = \"deny\"\n",
        )
        .unwrap();
        assert_eq!(compile(&pg).unwrap(), ("", 0));
        // A bad SSH policy names its line.
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[policy]\nname = \"bad\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ncommands = [\"echo $HOME\"]\n",
        )
        .unwrap();
        let e = compile(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml line 9: command pattern `echo $HOME`"),
            "{e}"
        );
        // An unknown protocol is an error of the SQL loader, naming the line.
        let other = dir.path().join("other.toml");
        std::fs::write(
            &other,
            "[policy]\nname = \"other\"\nprotocol = \"http\"\ndefault = \"deny\"\n",
        )
        .unwrap();
        let e = compile(&other).unwrap_err().to_string();
        assert!(e.contains("other.toml line 3") && e.contains("http"), "{e}");
        // A missing file.
        let e = compile(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        assert!(check(&[pg, bad, other]).is_err());
    }
}
