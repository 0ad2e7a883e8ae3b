use super::*;
use crate::roles::BUILT_IN;

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

fn problems(list: &[(&str, &str)]) -> Vec<String> {
    compile(&files(list))
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const ROLES: &str = "[roles.viewer]\npermissions = [\"view_costs\"]\n";

#[test]
fn the_shipped_policy_has_exactly_the_seeds_roles() {
    let p = default_policy();
    assert_eq!(p.role_names(), {
        let mut names: Vec<&str> = BUILT_IN.iter().map(|r| r.0).collect();
        names.sort_unstable();
        names
    });
    for (name, _, perms) in BUILT_IN {
        assert_eq!(p.role(name), Some(perms), "{name}");
    }
    assert_eq!(p.enforce.routes().len(), 10);
    assert!(p.shadow.routes().is_empty());
}

#[test]
fn the_shipped_directory_matches_the_built_in_copy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let on_disk = load_dir(&dir).unwrap();
    assert_eq!(on_disk.fingerprint, default_policy().fingerprint);
}

#[test]
fn problems_name_file_and_line() {
    let routes = "\n[[routes]]\nmethod = \"GET\"\npath = \"/a\"\npermission = \"view_cost\"\n";
    assert_eq!(
        problems(&[("r.toml", ROLES), ("routes.toml", routes)]),
        ["routes.toml:5: unknown permission \"view_cost\""]
    );

    let syntax = "[[routes]\nmethod = \"GET\"\n";
    let p = problems(&[("r.toml", ROLES), ("bad.toml", syntax)]);
    assert!(p[0].starts_with("bad.toml:1: "), "{p:?}");

    let dup = "[[routes]]\nmethod = \"GET\"\npath = \"/a/{x}\"\npermission = \"view_costs\"\n\n[[routes]]\nmethod = [\"POST\", \"GET\"]\npath = \"/a/{y}\"\npermission = \"view_costs\"\n";
    assert_eq!(
        problems(&[("r.toml", ROLES), ("routes.toml", dup)]),
        ["routes.toml:6: route \"/a/{y}\" conflicts with the route at routes.toml:1"]
    );

    let unknown_field = "[[routes]]\nmethod = \"GET\"\npath = \"/a\"\npermision = \"view_costs\"\n";
    let p = problems(&[("r.toml", ROLES), ("routes.toml", unknown_field)]);
    assert!(
        p[0].starts_with("routes.toml:") && p[0].contains("permision"),
        "{p:?}"
    );

    let method = "[[routes]]\nmethod = \"FETCH\"\npath = \"/a\"\npermission = \"view_costs\"\n";
    assert!(
        problems(&[("r.toml", ROLES), ("routes.toml", method)])[0]
            .contains("unknown method \"FETCH\"")
    );

    let mode = "mode = \"audit\"\n";
    assert_eq!(
        problems(&[("r.toml", ROLES), ("m.toml", mode)]),
        ["m.toml:1: mode must be \"enforce\" or \"shadow\", not \"audit\""]
    );

    let includes = "[roles.x]\nincludes = [\"ghost\"]\n";
    assert_eq!(
        problems(&[("r.toml", includes)]),
        ["r.toml:2: role \"x\" includes unknown role \"ghost\""]
    );

    let twice = [("a.toml", ROLES), ("b.toml", ROLES)];
    assert!(problems(&twice)[0].contains("already defined at a.toml:1"));

    let bad_path = "[[public]]\nmethod = \"GET\"\npath = \"/a/../b\"\n";
    assert!(
        problems(&[("r.toml", ROLES), ("p.toml", bad_path)])[0].starts_with("p.toml:3: bad path")
    );

    assert!(problems(&[("empty.toml", "")])[0].contains("no roles"));
}

#[test]
fn includes_and_shadow_files_compile() {
    let roles = "[roles.viewer]\npermissions = [\"view_costs\"]\n[roles.lead]\nincludes = [\"viewer\"]\npermissions = [\"export_costs\"]\n";
    let shadow = "mode = \"shadow\"\n[[routes]]\nmethod = \"*\"\npath = \"/v2/**\"\npermission = \"system_admin\"\n";
    let public = "[[public]]\nmethod = \"GET\"\npath = \"/v1/status\"\n";
    let p = compile(&files(&[
        ("roles.toml", roles),
        ("shadow.toml", shadow),
        ("public.toml", public),
    ]))
    .unwrap();
    assert_eq!(
        p.role("lead"),
        Some(Permissions::of(&[
            Permission::ViewCosts,
            Permission::ExportCosts
        ]))
    );
    assert_eq!(p.shadow.routes().len(), 1);
    assert_eq!(
        p.enforce
            .find(&Method::GET, "/v1/status")
            .unwrap()
            .route
            .access,
        Access::Public
    );
    let cyclic = "[roles.a]\nincludes = [\"b\"]\n[roles.b]\nincludes = [\"a\"]\n";
    assert!(
        problems(&[("r.toml", cyclic)])
            .iter()
            .any(|p| p.contains("includes itself"))
    );
}

/// Found by the authorization oracle (tests/authz_oracle.rs): a role that
/// reaches another through two includes (a diamond) is not a cycle, and
/// was refused as one ("includes itself").
#[test]
fn a_diamond_of_includes_is_not_a_cycle() {
    let diamond = "[roles.base]\npermissions = [\"view_costs\"]\n\
                   [roles.left]\npermissions = [\"export_costs\"]\nincludes = [\"base\"]\n\
                   [roles.right]\npermissions = [\"view_budgets\"]\nincludes = [\"base\"]\n\
                   [roles.top]\nincludes = [\"left\", \"right\", \"base\"]\n";
    let p = compile(&files(&[("roles.toml", diamond)])).unwrap();
    assert_eq!(
        p.role("top"),
        Some(Permissions::of(&[
            Permission::ViewCosts,
            Permission::ExportCosts,
            Permission::ViewBudgets
        ]))
    );
    // A real cycle below the role being resolved is still one, and names
    // the role whose include closes it.
    let cyclic = "[roles.top]\nincludes = [\"a\"]\n[roles.a]\nincludes = [\"b\"]\n[roles.b]\nincludes = [\"a\"]\n";
    let found = problems(&[("r.toml", cyclic)]);
    assert!(
        found
            .iter()
            .any(|p| p.contains("role \"a\" includes itself (through \"b\")")),
        "{found:?}"
    );
    let selfish = "[roles.a]\nincludes = [\"a\"]\n";
    assert!(
        problems(&[("r.toml", selfish)])
            .iter()
            .any(|p| p.contains("includes itself"))
    );
}

#[test]
fn project_query_names_a_parameter_on_a_route_without_a_project_segment() {
    let ok = "[[routes]]\nmethod = \"GET\"\npath = \"/t/{tenant}/exports\"\npermission = \"view_costs\"\nproject_query = \"project_id\"\n";
    let policy = compile(&files(&[("r.toml", ROLES), ("routes.toml", ok)])).unwrap();
    let m = policy
        .enforce
        .find(&Method::GET, "/t/org-1/exports")
        .unwrap();
    assert_eq!(m.route.project_query.as_deref(), Some("project_id"));

    let both = "[[routes]]\nmethod = \"GET\"\npath = \"/t/{tenant}/p/{project}\"\npermission = \"view_costs\"\nproject_query = \"project_id\"\n";
    let p = problems(&[("r.toml", ROLES), ("routes.toml", both)]);
    assert!(
        p[0].starts_with("routes.toml:5: project_query on \"/t/{tenant}/p/{project}\""),
        "{p:?}"
    );
    let odd = "[[routes]]\nmethod = \"GET\"\npath = \"/t\"\npermission = \"view_costs\"\nproject_query = \"a&b\"\n";
    let p = problems(&[("r.toml", ROLES), ("routes.toml", odd)]);
    assert!(
        p[0].starts_with("routes.toml:5: project_query \"a&b\""),
        "{p:?}"
    );
    // Public routes take no project_query (nobody to hold a grant).
    let public = "[[public]]\nmethod = \"GET\"\npath = \"/s\"\nproject_query = \"project_id\"\n";
    let p = problems(&[("r.toml", ROLES), ("routes.toml", public)]);
    assert!(p[0].contains("project_query"), "{p:?}");
}
