use super::*;

#[test]
fn service_names_are_namespace_slash_name() {
    assert_eq!(parse_key("web/a").unwrap(), ServiceKey::new("web", "a"));
    for bad in ["a", "/a", "web/", "a/b/c", ""] {
        let e = parse_key(bad).unwrap_err();
        assert!(e.to_string().contains("is not NAMESPACE/NAME"), "{e}");
    }
}

#[test]
fn a_service_not_in_the_snapshot_is_not_found() {
    let snapshot = Snapshot { namespace: "purelb-system".into(), ..Snapshot::default() };
    let e = explain(&snapshot, &Handling::default(), &ServiceKey::new("web", "a")).unwrap_err();
    assert_eq!(e.to_string(), "Service web/a not found, or it is not of type LoadBalancer");
}
