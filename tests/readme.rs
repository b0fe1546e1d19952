//! README.md's flag tables say what `fanout --help` says: the same flags, environment variables and
//! defaults, both ways. `--help` prints what the code does (a unit test in `config.rs` checks its defaults
//! against `Config::default()`), so a row that disagrees is the README's to fix.

use std::collections::BTreeMap;
use std::process::Command;

/// The sections of README.md whose tables list flags.
const SECTIONS: [&str; 2] = ["## Configuration", "## Operations"];

/// One flag as a table row or `--help` tells it.
#[derive(Debug, PartialEq, Eq)]
struct Flag {
    /// What stands for its value: `ADDR`, `MS|auto`.
    value: String,
    env: String,
    /// `None` where there is none: `--help` prints no `[default: ...]`, the README says `none`.
    default: Option<String>,
}

#[test]
fn every_flag_in_help_is_in_the_readme_tables_with_its_variable_and_default_and_nothing_else_is() {
    let help = help_flags();
    let readme = readme_flags();
    let mut wrong = Vec::new();
    for (name, said) in &help {
        match readme.get(name) {
            None => wrong.push(format!(
                "`{name}` is in --help but in no README table; its row: {}",
                said.row(name)
            )),
            Some((line, row)) => {
                for (column, readme, help) in row.differences(said) {
                    wrong.push(format!(
                        "README.md:{line}: `{name}`: {column} is `{readme}`, --help says `{help}`"
                    ));
                }
            }
        }
    }
    for (name, (line, _)) in &readme {
        if !help.contains_key(name) {
            wrong.push(format!(
                "README.md:{line}: `{name}` is not a flag `fanout --help` knows"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md and --help disagree:\n{}",
        wrong.join("\n")
    );
}

impl Flag {
    /// The columns where `self` and `other` differ: (column, ours, theirs).
    fn differences(&self, other: &Flag) -> Vec<(&'static str, String, String)> {
        let default = |f: &Flag| f.default.clone().unwrap_or_else(|| "none".into());
        [
            ("the value", self.value.clone(), other.value.clone()),
            (
                "the environment variable",
                self.env.clone(),
                other.env.clone(),
            ),
            ("the default", default(self), default(other)),
        ]
        .into_iter()
        .filter(|(_, ours, theirs)| ours != theirs)
        .collect()
    }

    /// Its README row, but for the meaning.
    fn row(&self, name: &str) -> String {
        let default = self.default.as_deref().unwrap_or("none");
        let value = self.value.replace('|', "\\|");
        format!("| `{name} {value}` | `{}` | `{default}` | ... |", self.env)
    }
}

/// Every setting `fanout --help` lists, by flag. A setting is two lines: `  --flag VALUE   ENV`, then its
/// help text, ending in `[default: ...]` if it has one. `--help` itself, with no variable, is no setting.
fn help_flags() -> BTreeMap<String, Flag> {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .arg("--help")
        .output()
        .expect("run fanout --help");
    assert!(out.status.success(), "fanout --help failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("--help prints UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let mut flags = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, value, env] = words[..] else {
            continue;
        };
        if !name.starts_with("--") || !env.starts_with("FANOUT_") {
            continue;
        }
        let text = lines.get(i + 1).copied().unwrap_or_default();
        let default = text
            .rsplit_once("[default: ")
            .and_then(|(_, rest)| rest.strip_suffix(']'));
        let flag = Flag {
            value: value.into(),
            env: env.into(),
            default: default.map(String::from),
        };
        flags.insert(name.to_string(), flag);
    }
    assert!(
        flags.len() > 30,
        "too few settings read from --help:\n{text}"
    );
    flags
}

/// Every row of a `| flag | environment | default | ...` table in the README's [`SECTIONS`], by flag, with
/// its line number.
fn readme_flags() -> BTreeMap<String, (usize, Flag)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    let mut flags = BTreeMap::new();
    let (mut in_section, mut in_table) = (false, false);
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("## ") {
            in_section = SECTIONS.contains(&line);
        }
        let cells = cells(line);
        if !in_section || cells.is_empty() {
            in_table = false;
            continue;
        }
        if cells.len() >= 3 && cells[..3] == ["flag", "environment", "default"] {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        let [flag, env, default, ..] = &cells[..] else {
            panic!("README.md:{}: a flag row needs three cells: {line}", i + 1);
        };
        let (name, value) = flag.split_once(' ').unwrap_or((flag.as_str(), ""));
        let row = Flag {
            value: value.into(),
            env: env.clone(),
            default: Some(default.clone()).filter(|d| d != "none"),
        };
        if let Some((first, _)) = flags.insert(name.to_string(), (i + 1, row)) {
            panic!(
                "README.md:{}: `{name}` has a row already, at line {first}",
                i + 1
            );
        }
    }
    assert!(flags.len() > 30, "too few flag rows read from README.md");
    flags
}

/// The cells of a Markdown table row, trimmed and without their backticks; `\|` is a `|` inside a cell.
/// Empty for a line that is no table row.
fn cells(line: &str) -> Vec<String> {
    let Some(inner) = line
        .trim()
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'))
    else {
        return Vec::new();
    };
    let inner = inner.replace("\\|", "\u{0}");
    inner
        .split('|')
        .map(|cell| cell.trim().trim_matches('`').replace('\u{0}', "|"))
        .collect()
}
