//! `cordon policy check FILE...`: compiles policy files locally (no daemon needed), prints
//! `ok <file> (<n> rules)` for each good one and `<file> line <n>: <problem>` for each bad one.

use std::path::PathBuf;

pub fn check(files: &[PathBuf]) -> anyhow::Result<()> {
    if files.is_empty() {
        anyhow::bail!("no policy files given");
    }
    let mut bad = 0usize;
    for file in files {
        match crate::policy::load(file) {
            Ok(policy) => {
                let n = policy.rule_count();
                let rules = if n == 1 { "rule" } else { "rules" };
                println!("ok {} ({n} {rules})", file.display());
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
}
