//! Metadata tables as parquet: round trips, type inference, pandas' files
//! and json_normalize's flattening.

use longclip::table::{columns_from_rows, flatten_json, read_parquet, write_parquet, Column, Value};

fn col(name: &str, values: Vec<Value>) -> Column {
    Column { name: name.to_string(), values }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn round_trip(columns: &[Column]) -> Vec<Column> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_parquet(&path, columns).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["t.parquet"], "no temporary file is left");
    read_parquet(&path).unwrap()
}

#[test]
fn round_trip_keeps_every_type_and_null() {
    let columns = vec![
        col("image_path", vec![text("a/0.jpg"), text("b/1.jpg"), text("c/2.jpg")]),
        col("id", vec![Value::Int(0), Value::Int(i64::MAX), Value::Int(-5)]),
        col("score", vec![Value::Float(0.5), Value::Null, Value::Float(-1e300)]),
        col("flag", vec![Value::Bool(true), Value::Null, Value::Bool(false)]),
        col("caption", vec![Value::Null, text(""), text("a, \"quoted\"\nline")]),
    ];
    assert_eq!(round_trip(&columns), columns);
}

#[test]
fn types_are_inferred_per_column() {
    let columns = vec![
        col("ints_and_floats", vec![Value::Int(1), Value::Float(2.5), Value::Null]),
        col("mixed", vec![Value::Int(1), text("x"), Value::Bool(true), Value::Null, Value::Float(1.5)]),
        col("all_null", vec![Value::Null; 5]),
        col("ints", vec![Value::Int(3), Value::Null, Value::Int(4), Value::Null, Value::Null]),
    ];
    let columns = columns.into_iter().map(|mut c| {
        c.values.resize(5, Value::Null);
        c
    });
    let back = round_trip(&columns.collect::<Vec<_>>());
    assert_eq!(back[0].values[..3], [Value::Float(1.0), Value::Float(2.5), Value::Null]);
    assert_eq!(back[1].values, [text("1"), text("\"x\""), text("true"), Value::Null, text("1.5")]);
    assert_eq!(back[2].values, vec![Value::Null; 5]);
    assert_eq!(back[3].values, [Value::Int(3), Value::Null, Value::Int(4), Value::Null, Value::Null]);
}

#[test]
fn unicode_survives() {
    let columns = vec![col("ünïcödé 名前", vec![text("コード 🦀"), text("Ünïcode\u{0}nul")])];
    assert_eq!(round_trip(&columns), columns);
}

#[test]
fn zero_rows_and_zero_columns() {
    let columns = vec![col("image_path", vec![]), col("id", vec![])];
    assert_eq!(round_trip(&columns), columns);
    assert_eq!(round_trip(&[]), Vec::<Column>::new());
}

#[test]
fn bad_tables_and_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let e = write_parquet(&path, &[col("a", vec![Value::Int(1)]), col("b", vec![])]).unwrap_err();
    assert!(format!("{e:#}").contains("column 'b' has 0 rows but column 'a' has 1"), "{e:#}");
    let e = write_parquet(&path, &[col("a", vec![]), col("a", vec![])]).unwrap_err();
    assert!(format!("{e:#}").contains("column 'a' appears twice"), "{e:#}");
    assert!(!path.exists());

    let not = dir.path().join("not.parquet");
    std::fs::write(&not, "image_path,id\na.jpg,0\n").unwrap();
    let e = format!("{:#}", read_parquet(&not).unwrap_err());
    assert!(e.contains("not.parquet") && e.contains("not a parquet file"), "{e}");
    let e = format!("{:#}", read_parquet(&dir.path().join("missing.parquet")).unwrap_err());
    assert!(e.contains("missing.parquet") && e.contains("cannot open"), "{e}");
    // A real file cut short.
    let good = dir.path().join("good.parquet");
    write_parquet(&good, &[col("a", vec![Value::Int(1); 100])]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&not, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", read_parquet(&not).unwrap_err());
    assert!(e.contains("not.parquet"), "{e}");
}

/// `tests/fixtures/pandas-metadata.parquet` is pandas 2.3.3 / pyarrow 26's
/// `df.to_parquet` (dictionary pages, snappy); the script is in
/// tests/fixtures/README.md.
#[test]
fn reads_a_pandas_file_exactly() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pandas-metadata.parquet");
    let columns = read_parquet(&path).unwrap();
    let expected = vec![
        col("image_path", vec![text("a/0.jpg"), text("b/1.jpg"), text("ünï/コード.jpg")]),
        col("caption", vec![text("a red cube"), Value::Null, text("ein Würfel, \"quoted\"")]),
        col("id", vec![Value::Int(0), Value::Int(1), Value::Int(2)]),
        col("small", vec![Value::Int(7), Value::Int(-8), Value::Int(9)]),
        // pyarrow stores pandas' NaN as null.
        col("score", vec![Value::Float(0.5), Value::Null, Value::Float(-2.25)]),
        col("flag", vec![Value::Bool(true), Value::Bool(false), Value::Bool(true)]),
        col("tags", vec![text("[1,2]"), text("[]"), Value::Null]),
        col("when", vec![text("2024-01-02T03:04:05"), text("1969-12-31T23:59:59.5"), Value::Null]),
    ];
    assert_eq!(columns, expected);
}

fn object(json: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(json).unwrap()
}

fn names(row: &[(String, Value)]) -> Vec<&str> {
    row.iter().map(|(n, _)| n.as_str()).collect()
}

/// Expected orders are pandas 2.3.3's `pd.json_normalize` on the same
/// objects (keys in file order: serde_json's preserve_order).
#[test]
fn flatten_json_matches_pandas_json_normalize() {
    let row = flatten_json(&object(r#"{"a": {"x": {"p": 1}, "y": 2}, "b": [{"q": 1}], "c": null, "d": {"e": null, "f": {"g": [1, "two"]}}, "h": true}"#));
    assert_eq!(names(&row), ["b", "c", "h", "a.x.p", "a.y", "d.e", "d.f.g"]);
    let values: Vec<Value> = row.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, [text(r#"[{"q":1}]"#), Value::Null, Value::Bool(true), Value::Int(1), Value::Int(2), Value::Null, text(r#"[1,"two"]"#)]);

    // Empty objects vanish at any depth; big and fractional numbers are floats.
    let row = flatten_json(&object(r#"{"a": {}, "b": {"c": {}}, "n": 18446744073709551615, "f": 1.5, "s": "ü"}"#));
    assert_eq!(row, [("n".to_string(), Value::Float(18446744073709551615.0)), ("f".to_string(), Value::Float(1.5)), ("s".to_string(), text("ü"))]);
}

#[test]
fn columns_from_rows_unions_names_in_first_appearance_order() {
    let rows = vec![
        flatten_json(&object(r#"{"a": {"b": 1, "c": {"d": null}}, "e": [1, 2], "f": {}, "g": "x"}"#)),
        flatten_json(&object(r#"{"z": 1, "a": {"b": 2.5}}"#)),
    ];
    let columns = columns_from_rows(rows);
    // pd.json_normalize([...]).columns on the same two objects.
    assert_eq!(columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["e", "g", "a.b", "a.c.d", "z"]);
    assert_eq!(columns[2].values, [Value::Int(1), Value::Float(2.5)]);
    assert_eq!(columns[4].values, [Value::Null, Value::Int(1)]);
    assert_eq!(columns_from_rows(vec![]), Vec::<Column>::new());
}
