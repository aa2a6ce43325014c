//! Server-side table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which
//! `kubectl get` asks for: the columns a real server shows for Services, the CRD's
//! `additionalPrinterColumns` for custom resources, and Name/Age for everything else.

use purelb::k8s_openapi::jiff;
use serde_json::{Value, json};

use super::registry::ResourceDef;

fn age(timestamp: &Value) -> String {
    let Some(ts) = timestamp.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".to_owned();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Evaluates the small JSONPath subset printer columns use: `.a.b`, `.a[0].b`,
/// `.a[?(@.type=="Ready")].status`.
fn json_path<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![object];
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        let (segment, tail) = match rest.find(['.', '[']) {
            Some(0) => ("", rest),
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !segment.is_empty() {
            current = current.into_iter().filter_map(|v| v.get(segment)).collect();
        }
        rest = tail;
        if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else { return Vec::new() };
            let inner = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==").unwrap_or((filter, ""));
                let want = want.trim().trim_matches('"').trim_matches('\'');
                current = current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter(|item| item.get(field.trim()).and_then(Value::as_str) == Some(want))
                    .collect();
            } else if let Ok(index) = inner.parse::<usize>() {
                current = current.into_iter().filter_map(|v| v.get(index)).collect();
            } else if inner == "*" {
                current = current.into_iter().filter_map(Value::as_array).flatten().collect();
            }
        }
        rest = rest.trim_start_matches('.');
    }
    current
}

fn cell(values: &[&Value]) -> Value {
    match values {
        [] => Value::Null,
        [one] => (*one).clone(),
        many => json!(
            many.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(",")
        ),
    }
}

fn service_cells(o: &Value) -> Vec<Value> {
    let spec = &o["spec"];
    let external: Vec<String> = o["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()).map(str::to_owned)).collect())
        .unwrap_or_default();
    let external = if external.is_empty() {
        if spec["type"] == "LoadBalancer" { "<pending>".to_owned() } else { "<none>".to_owned() }
    } else {
        external.join(",")
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_u64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    vec![
        o["metadata"]["name"].clone(),
        spec["type"].clone(),
        spec["clusterIP"].clone(),
        json!(external),
        json!(if ports.is_empty() { "<none>".to_owned() } else { ports.join(",") }),
        json!(age(&o["metadata"]["creationTimestamp"])),
    ]
}

/// A `meta.k8s.io/v1` Table of `items`.
#[must_use]
pub fn table_for(def: &ResourceDef, version: &str, items: &[Value]) -> Value {
    let col = |name: &str, ty: &str, format: &str| json!({"name": name, "type": ty, "format": format, "description": "", "priority": 0});
    let (columns, rows): (Vec<Value>, Vec<Vec<Value>>) = if def.group.is_empty() && def.plural == "services" {
        (
            vec![
                col("Name", "string", "name"),
                col("Type", "string", ""),
                col("Cluster-IP", "string", ""),
                col("External-IP", "string", ""),
                col("Port(s)", "string", ""),
                col("Age", "string", ""),
            ],
            items.iter().map(service_cells).collect(),
        )
    } else if let Some(Value::Array(printer)) = def.printer_columns.get(version) {
        let mut columns = vec![col("Name", "string", "name")];
        for c in printer {
            let ty = c["type"].as_str().unwrap_or("string");
            columns.push(json!({"name": c["name"], "type": if ty == "date" { "date" } else { ty }, "format": c["format"].as_str().unwrap_or(""), "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)}));
        }
        let rows = items
            .iter()
            .map(|o| {
                let mut cells = vec![o["metadata"]["name"].clone()];
                for c in printer {
                    let values = json_path(o, c["jsonPath"].as_str().unwrap_or_default());
                    let v = cell(&values);
                    cells.push(if c["type"] == "date" { json!(age(&v)) } else { v });
                }
                cells
            })
            .collect();
        (columns, rows)
    } else {
        (
            vec![col("Name", "string", "name"), col("Age", "string", "")],
            items
                .iter()
                .map(|o| vec![o["metadata"]["name"].clone(), json!(age(&o["metadata"]["creationTimestamp"]))])
                .collect(),
        )
    };
    let rows: Vec<Value> = rows
        .into_iter()
        .zip(items)
        .map(|(cells, o)| json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}))
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_subset() {
        let o = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}], "n": 3}});
        assert_eq!(json_path(&o, ".status.n"), vec![&json!(3)]);
        assert_eq!(json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"), vec![&json!("True")]);
        assert_eq!(json_path(&o, ".status.conditions[1].type"), vec![&json!("X")]);
        assert!(json_path(&o, ".missing.x").is_empty());
    }
}
