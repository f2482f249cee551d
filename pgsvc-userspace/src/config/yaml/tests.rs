use super::*;

fn root(src: &str) -> Node {
    parse(src).unwrap().root.unwrap()
}

#[test]
fn scalars_resolve_like_pyyaml() {
    let doc = root(
        "a: yes\nb: off\nc: 0755\nd: 0x1f\ne: 1.5\nf: 198.18.0.11\ng: '5'\nh: ~\ni: 1e3\nj: -4\n",
    );
    assert_eq!(doc.get("a").unwrap().value, Value::Bool(true));
    assert_eq!(doc.get("b").unwrap().value, Value::Bool(false));
    assert_eq!(doc.get("c").unwrap().value, Value::Int(0o755));
    assert_eq!(doc.get("d").unwrap().value, Value::Int(31));
    assert_eq!(doc.get("e").unwrap().value, Value::Float(1.5));
    assert_eq!(
        doc.get("f").unwrap().value,
        Value::Str("198.18.0.11".into())
    );
    assert_eq!(doc.get("g").unwrap().value, Value::Str("5".into()));
    assert_eq!(doc.get("h").unwrap().value, Value::Null);
    assert_eq!(doc.get("i").unwrap().value, Value::Str("1e3".into()));
    assert_eq!(doc.get("j").unwrap().value, Value::Int(-4));
}

#[test]
fn positions_are_one_based_line_and_column() {
    let doc = root("all:\n  vars:\n    port: 5433\n    flow: { x: 1, y: 2 }\n");
    let vars = doc.get("all").unwrap().get("vars").unwrap();
    assert_eq!(
        vars.get("port").unwrap().pos,
        Pos {
            line: 3,
            column: 11
        }
    );
    let flow = vars.get("flow").unwrap();
    assert_eq!(
        flow.get("y").unwrap().pos,
        Pos {
            line: 4,
            column: 22
        }
    );
    let key_pos = vars.as_map().unwrap()[1].0.pos;
    assert_eq!(key_pos, Pos { line: 4, column: 5 });
}

#[test]
fn syntax_errors_carry_a_position() {
    let err = parse("all:\n  vars: {a: 1\n  b: 2\n").unwrap_err();
    assert!(err.pos.line >= 2, "{err}");
    assert!(!err.message.is_empty());
}

#[test]
fn duplicate_keys_keep_the_last_and_are_reported() {
    let doc = parse("a: 1\nb: 2\na: 3\n").unwrap();
    let root = doc.root.unwrap();
    assert_eq!(root.get("a").unwrap().value, Value::Int(3));
    assert_eq!(
        doc.duplicate_keys,
        vec![(Pos { line: 3, column: 1 }, "a".into())]
    );
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let doc = root("base: &b { x: 1, y: 2 }\nuse: { <<: *b, y: 3 }\nref: *b\n");
    let used = doc.get("use").unwrap();
    assert_eq!(used.get("x").unwrap().value, Value::Int(1));
    assert_eq!(used.get("y").unwrap().value, Value::Int(3));
    assert_eq!(
        doc.get("ref").unwrap().get("y").unwrap().value,
        Value::Int(2)
    );
}

#[test]
fn empty_document_has_no_root() {
    assert!(parse("").unwrap().root.is_none());
    assert!(parse("# only a comment\n").unwrap().root.is_none());
}
