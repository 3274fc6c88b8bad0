//! `ferry votes` as an operator runs it: the real binary, real files, exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).output().expect("running ferry")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write input");
    p.to_string_lossy().into_owned()
}

fn stdout(o: &Output) -> &str {
    std::str::from_utf8(&o.stdout).expect("utf8")
}

fn stderr(o: &Output) -> &str {
    std::str::from_utf8(&o.stderr).expect("utf8")
}

#[test]
fn normalize_to_stdout_and_to_a_file() {
    let dir = tempdir("normalize");
    let input = write(&dir, "jp.csv", "\u{feff}\"SCORE\",\"KSEQ\"\n\"1\",\"(1,2)\"\n\"3\",\"b\"\n\"1\",\"(1,2)\"\n");
    let o = ferry(&["votes", "normalize", "--method", "minmax", &input]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "kseq,score,raw\nb,1.0,3.0\n\"(1,2)\",0.0,2.0\n");

    let out = dir.join("out.csv");
    let o = ferry(&["votes", "normalize", &input, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "kseq,score,raw\nb,0.6,3.0\n\"(1,2)\",0.4,2.0\n");
}

#[test]
fn bad_input_exits_65_names_file_and_line_and_leaves_output_alone() {
    let dir = tempdir("bad");
    let out = write(&dir, "out.csv", "previous result\n");
    let cases = [
        ("kseq,score\na,1\nb,lots\n", "line 3: field `score` is not a number: \"lots\""),
        ("kseq,score\na,-1\n", "line 2: field `score` is negative"),
        ("key,score\na,1\n", "line 1: the header has no `kseq` column"),
        ("kseq,score\n,1\n", "line 2: field `kseq` is empty"),
    ];
    for (i, (body, expect)) in cases.into_iter().enumerate() {
        let input = write(&dir, &format!("in{i}.csv"), body);
        let o = ferry(&["votes", "normalize", &input, "-o", &out]);
        assert_eq!(o.status.code(), Some(65), "{body:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&input) && stderr(&o).contains(expect), "{:?} lacks {expect:?}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous result\n");
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left behind");

    let o = ferry(&["votes", "normalize", &dir.join("absent.csv").to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("absent.csv"), "{}", stderr(&o));
    let input = write(&dir, "big.csv", "kseq,score\na,1\n");
    let o = ferry(&["votes", "normalize", "--max-input-bytes", "5", &input]);
    assert_eq!(o.status.code(), Some(65));
    assert!(stderr(&o).contains("over the limit of 5 bytes"), "{}", stderr(&o));
}

#[test]
fn merge_weights_locales_and_ignores_argument_order() {
    let dir = tempdir("merge");
    let jp = write(&dir, "jp.csv", "kseq,score\na,3\nb,1\n");
    let kr = write(&dir, "kr.csv", "kseq,score\nb,1\nc,1\n");
    let (jp_arg, kr_arg) = (format!("jp={jp}"), format!("kr={kr}"));
    let one = ferry(&["votes", "merge", "--weight", "kr=2", &jp_arg, &kr_arg]);
    assert!(one.status.success(), "{}", stderr(&one));
    // jp: a .75 b .25; kr: b .5 c .5 (x2)
    assert_eq!(stdout(&one), "kseq,score,jp,kr\nb,1.25,0.25,1.0\nc,1.0,0.0,1.0\na,0.75,0.75,0.0\n");
    let two = ferry(&["votes", "merge", &kr_arg, "-w", "kr=2", &jp_arg]);
    assert_eq!(stdout(&one), stdout(&two));
}

#[test]
fn usage_errors_exit_2_and_help_explains_options() {
    let o = ferry(&["votes", "merge", "JP=x.csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not lowercase letters"), "{}", stderr(&o));
    let o = ferry(&["votes", "merge", "jp=x.csv", "--weight", "jp=-1"]);
    assert_eq!(o.status.code(), Some(2));
    let o = ferry(&["votes", "normalize", "--method", "median", "x.csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected one of share, minmax, zscore, rank"), "{}", stderr(&o));
    let o = ferry(&["votes", "merge", "jp=a.csv", "jp=b.csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("locale jp is given more than once"), "{}", stderr(&o));

    let help = ferry(&["votes", "merge", "--help"]);
    let text = stdout(&help);
    for option in ["--method", "--weight", "--default-weight", "--max-input-bytes", "--output", "LOCALE=FILE"] {
        assert!(text.contains(option), "help lacks {option}:\n{text}");
    }
}
