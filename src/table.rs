//! Metadata tables as parquet files, the way clip-retrieval keeps them
//! (`metadata/metadata_{i}.parquet`, written by pandas' `df.to_parquet`:
//! pyarrow engine, snappy). A table is a list of equally long named columns
//! of loosely typed cells; [`flatten_json`] and [`columns_from_rows`] make
//! one from JSON records as `pandas.json_normalize` does.
//!
//! Only the low-level parquet API is used (no arrow): one row group per
//! file written, every column OPTIONAL, types inferred per column.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::record::Field;
use parquet::schema::types::Type;

/// One cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// A named column; all columns of a table have the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub values: Vec<Value>,
}

/// `pandas.json_normalize` for one JSON object: nested objects flattened
/// with '.' (`{"a":{"b":1}}` -> `a.b`); arrays, and anything else that is
/// not a scalar, become their compact JSON text (`Value::Text`); JSON null
/// -> Null; integers that fit i64 -> Int, other numbers -> Float.
///
/// Order is pandas' (`_normalise_json_ordered`, pandas 2.x): the top-level
/// keys that are not objects first, then the nested ones depth first, each
/// in the map's key order (sorted, unless serde_json's `preserve_order`
/// feature is on). Empty objects vanish, as in pandas.
pub fn flatten_json(object: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = object.iter().filter(|(_, v)| !v.is_object()).map(|(k, v)| (k.clone(), cell_of_json(v))).collect();
    for (key, value) in object.iter().filter(|(_, v)| v.is_object()) {
        flatten_into(key, value, &mut out);
    }
    out
}

fn flatten_into(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, Value)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                flatten_into(&format!("{prefix}.{key}"), inner, out);
            }
        }
        other => out.push((prefix.to_string(), cell_of_json(other))),
    }
}

/// A JSON scalar as a cell; arrays (and objects) as their compact text.
fn cell_of_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    }
}

/// Rows of (name, value) into columns: the union of names in order of first
/// appearance (pandas' DataFrame-from-records order), a missing cell is
/// Null. A name repeated within one row keeps its last value.
pub fn columns_from_rows(rows: Vec<Vec<(String, Value)>>) -> Vec<Column> {
    let mut columns: Vec<Column> = Vec::new();
    let mut position = std::collections::HashMap::new();
    let n = rows.len();
    for (r, row) in rows.into_iter().enumerate() {
        for (name, value) in row {
            let c = *position.entry(name.clone()).or_insert_with(|| {
                columns.push(Column { name, values: vec![Value::Null; n] });
                columns.len() - 1
            });
            columns[c].values[r] = value;
        }
    }
    columns
}

/// The parquet type a column is written as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Text,
    /// Mixed cells, each written as its JSON text.
    Json,
}

fn kind_of(values: &[Value]) -> Kind {
    let (mut int, mut float, mut boolean, mut text) = (false, false, false, false);
    for v in values {
        match v {
            Value::Null => {}
            Value::Int(_) => int = true,
            Value::Float(_) => float = true,
            Value::Bool(_) => boolean = true,
            Value::Text(_) => text = true,
        }
    }
    match (int, float, boolean, text) {
        (true, false, false, false) => Kind::Int,
        (_, true, false, false) => Kind::Float,
        (false, false, true, false) => Kind::Bool,
        (false, false, false, _) => Kind::Text,
        _ => Kind::Json,
    }
}

/// A cell as JSON text (mixed columns); non-finite floats are null.
fn json_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) if f.is_finite() => Some(serde_json::Value::from(*f).to_string()),
        Value::Float(_) => None,
        Value::Text(s) => Some(serde_json::Value::from(s.as_str()).to_string()),
    }
}

/// Writes a parquet file atomically (temp name then rename),
/// snappy-compressed, one row group. Column types inferred per column: only
/// Int/Null -> INT64; Int/Float/Null -> DOUBLE; Bool/Null -> BOOLEAN;
/// Text/Null -> BYTE_ARRAY String (UTF8); any other mix -> String with each
/// value rendered as JSON text (a Text cell keeps its quotes; a non-finite
/// Float is null); an all-Null column -> String of nulls. All columns
/// OPTIONAL. Zero rows is allowed.
///
/// Errors: columns of different lengths or a repeated column name (naming
/// them), and I/O errors naming the file.
pub fn write_parquet(path: &Path, columns: &[Column]) -> Result<()> {
    check_shape(columns).with_context(|| format!("{}: cannot write this table", path.display()))?;
    let tmp = crate::export::temp_path(path);
    let result = write_file(&tmp, columns).with_context(|| format!("{}: cannot write", tmp.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

fn check_shape(columns: &[Column]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for c in columns {
        if !seen.insert(c.name.as_str()) {
            bail!("column '{}' appears twice", c.name);
        }
        if c.values.len() != columns[0].values.len() {
            bail!("column '{}' has {} rows but column '{}' has {}", c.name, c.values.len(), columns[0].name, columns[0].values.len());
        }
    }
    Ok(())
}

fn write_file(path: &Path, columns: &[Column]) -> Result<()> {
    let kinds: Vec<Kind> = columns.iter().map(|c| kind_of(&c.values)).collect();
    let fields = columns.iter().zip(&kinds).map(|(c, k)| field_type(&c.name, *k).map(Arc::new)).collect::<Result<Vec<_>>>()?;
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let file = File::create(path).context("cannot create")?;
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    let mut group = writer.next_row_group()?;
    for (column, kind) in columns.iter().zip(&kinds) {
        let mut w = group.next_column()?.context("the writer has fewer columns than the schema")?;
        write_column(&mut w, &column.values, *kind).with_context(|| format!("column '{}'", column.name))?;
        w.close()?;
    }
    group.close()?;
    let file = writer.into_inner()?;
    file.sync_all()?;
    Ok(())
}

fn field_type(name: &str, kind: Kind) -> Result<Type> {
    let (physical, logical) = match kind {
        Kind::Int => (PhysicalType::INT64, None),
        Kind::Float => (PhysicalType::DOUBLE, None),
        Kind::Bool => (PhysicalType::BOOLEAN, None),
        Kind::Text | Kind::Json => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
    };
    let t = Type::primitive_type_builder(name, physical).with_repetition(Repetition::OPTIONAL).with_logical_type(logical).build()?;
    Ok(t)
}

/// Definition levels (1 present, 0 null) and the present values.
fn levels<T>(values: &[Value], f: impl Fn(&Value) -> Option<T>) -> (Vec<T>, Vec<i16>) {
    let mut present = Vec::new();
    let mut defs = Vec::with_capacity(values.len());
    for v in values {
        match f(v) {
            Some(x) => {
                present.push(x);
                defs.push(1);
            }
            None => defs.push(0),
        }
    }
    (present, defs)
}

fn write_column(w: &mut SerializedColumnWriter<'_>, values: &[Value], kind: Kind) -> Result<()> {
    match kind {
        Kind::Int => {
            let (v, d) = levels(values, |v| if let Value::Int(i) = v { Some(*i) } else { None });
            w.typed::<Int64Type>().write_batch(&v, Some(&d), None)?;
        }
        Kind::Float => {
            let (v, d) = levels(values, |v| match v {
                Value::Int(i) => Some(*i as f64),
                Value::Float(f) => Some(*f),
                _ => None,
            });
            w.typed::<DoubleType>().write_batch(&v, Some(&d), None)?;
        }
        Kind::Bool => {
            let (v, d) = levels(values, |v| if let Value::Bool(b) = v { Some(*b) } else { None });
            w.typed::<BoolType>().write_batch(&v, Some(&d), None)?;
        }
        Kind::Text => {
            let (v, d) = levels(values, |v| if let Value::Text(s) = v { Some(ByteArray::from(s.as_str())) } else { None });
            w.typed::<ByteArrayType>().write_batch(&v, Some(&d), None)?;
        }
        Kind::Json => {
            let (v, d) = levels(values, |v| json_text(v).map(|s| ByteArray::from(s.into_bytes())));
            w.typed::<ByteArrayType>().write_batch(&v, Some(&d), None)?;
        }
    }
    Ok(())
}

/// Reads a whole parquet file (ours or pandas/pyarrow's: dictionary pages,
/// snappy, any number of row groups). Cells: booleans -> Bool; integers of
/// any width -> Int (unsigned 64-bit ones above i64::MAX -> Float); float,
/// double, float16 -> Float; strings -> Text (other byte arrays as lossy
/// UTF-8 text); lists, maps and structs -> Text of their compact JSON;
/// dates, times, timestamps (ISO 8601, `Z` when adjusted to UTC) and
/// decimals -> Text. Every stored column is returned, pandas' index columns
/// (`__index_level_0__`) included.
///
/// Errors name the file: not found, not parquet, or an unreadable page.
pub fn read_parquet(path: &Path) -> Result<Vec<Column>> {
    let what = || format!("{}: cannot read the parquet file", path.display());
    crate::index::catch_panic(what, || read_file(path))?.with_context(what)
}

fn read_file(path: &Path) -> Result<Vec<Column>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema();
    let types: Vec<Arc<Type>> = schema.get_fields().to_vec();
    let rows = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let mut columns: Vec<Column> = types.iter().map(|t| Column { name: t.name().to_string(), values: Vec::with_capacity(rows) }).collect();
    for (r, row) in reader.get_row_iter(None)?.enumerate() {
        let row = row.with_context(|| format!("row {r}"))?;
        for (c, (_, field)) in row.get_column_iter().enumerate() {
            let column = columns.get_mut(c).with_context(|| format!("row {r} has more columns than the schema"))?;
            column.values.push(cell_of_field(field, &types[c]));
        }
    }
    Ok(columns)
}

/// A top-level cell; the column's type tells nanosecond timestamps (which
/// the row reader hands over as plain integers) from integers.
fn cell_of_field(field: &Field, ty: &Type) -> Value {
    let logical = if ty.is_primitive() { ty.get_basic_info().logical_type_ref() } else { None };
    match (field, logical) {
        (Field::Long(n), Some(LogicalType::Timestamp(t))) => Value::Text(timestamp_text(*n, &t.unit, t.is_adjusted_to_u_t_c)),
        (Field::TimestampMillis(n), Some(LogicalType::Timestamp(t))) => Value::Text(timestamp_text(*n, &TimeUnit::MILLIS, t.is_adjusted_to_u_t_c)),
        (Field::TimestampMicros(n), Some(LogicalType::Timestamp(t))) => Value::Text(timestamp_text(*n, &TimeUnit::MICROS, t.is_adjusted_to_u_t_c)),
        _ => cell_of_nested(field),
    }
}

fn cell_of_nested(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::Int(*n as i64),
        Field::Short(n) => Value::Int(*n as i64),
        Field::Int(n) => Value::Int(*n as i64),
        Field::Long(n) => Value::Int(*n),
        Field::UByte(n) => Value::Int(*n as i64),
        Field::UShort(n) => Value::Int(*n as i64),
        Field::UInt(n) => Value::Int(*n as i64),
        Field::ULong(n) => i64::try_from(*n).map(Value::Int).unwrap_or(Value::Float(*n as f64)),
        Field::Float16(f) => Value::Float(f.to_f64()),
        Field::Float(f) => Value::Float(*f as f64),
        Field::Double(f) => Value::Float(*f),
        Field::Str(s) => Value::Text(s.clone()),
        Field::Bytes(b) => Value::Text(String::from_utf8_lossy(b.data()).into_owned()),
        Field::TimestampMillis(n) => Value::Text(timestamp_text(*n, &TimeUnit::MILLIS, false)),
        Field::TimestampMicros(n) => Value::Text(timestamp_text(*n, &TimeUnit::MICROS, false)),
        Field::Date(days) => Value::Text(date_text(*days as i64)),
        Field::ListInternal(_) | Field::MapInternal(_) | Field::Group(_) => Value::Text(json_of(field).to_string()),
        // Decimals, times: their display form.
        other => Value::Text(other.to_string()),
    }
}

/// Nested values as JSON (lists, maps and structs of any depth).
fn json_of(field: &Field) -> serde_json::Value {
    use serde_json::Value as J;
    match field {
        Field::ListInternal(list) => J::Array(list.elements().iter().map(json_of).collect()),
        Field::MapInternal(map) => J::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match cell_of_nested(k) {
                        Value::Text(s) => s,
                        other => json_of_cell(&other).to_string(),
                    };
                    (key, json_of(v))
                })
                .collect(),
        ),
        Field::Group(row) => J::Object(row.get_column_iter().map(|(k, v)| (k.clone(), json_of(v))).collect()),
        scalar => json_of_cell(&cell_of_nested(scalar)),
    }
}

fn json_of_cell(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
        Value::Text(s) => s.as_str().into(),
    }
}

/// `2024-01-02T03:04:05.5Z`: seconds and fraction since the epoch in ISO
/// 8601, the fraction without trailing zeros, `Z` only for UTC instants.
fn timestamp_text(value: i64, unit: &TimeUnit, utc: bool) -> String {
    let time = match unit {
        TimeUnit::MILLIS => chrono::DateTime::from_timestamp_millis(value),
        TimeUnit::MICROS => chrono::DateTime::from_timestamp_micros(value),
        TimeUnit::NANOS => Some(chrono::DateTime::from_timestamp_nanos(value)),
    };
    let Some(time) = time else { return value.to_string() };
    let mut s = time.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if utc {
        s.push('Z');
    }
    s
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
fn date_text(days: i64) -> String {
    chrono::DateTime::from_timestamp(days.saturating_mul(86_400), 0).map_or_else(|| days.to_string(), |t| t.format("%Y-%m-%d").to_string())
}
