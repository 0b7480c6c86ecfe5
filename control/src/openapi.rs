//! The OpenAPI 3.0 description of [`crate::api`], written by hand. A test checks it against the
//! router's route table both ways, including the role each operation needs
//! (`x-stampede-role`), so it cannot drift from what is served.
use serde_json::{Value, json};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(schema: Value) -> Value {
    json!({ "content": { "application/json": { "schema": schema } } })
}

fn ok(description: &str, schema: Value) -> Value {
    let mut r = json_body(schema);
    r["description"] = json!(description);
    r
}

fn error(description: &str) -> Value {
    ok(description, schema_ref("Error"))
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

/// What the server accepts as a MAC: six hex octets separated by ':' or '-'.
const MAC_PATTERN: &str = "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$";
/// Names of profiles, images and tokens (`model::validate_name`).
const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$";
const SHA256_PATTERN: &str = "^[0-9A-Fa-f]{64}$";

fn mac_string() -> Value {
    json!({ "type": "string", "pattern": MAC_PATTERN, "example": "52:54:00:12:34:56" })
}

fn name_string() -> Value {
    json!({ "type": "string", "pattern": NAME_PATTERN })
}

/// One operation. `role` is `None` for public routes.
fn op(summary: &str, role: Option<&str>, mut responses: Value) -> Value {
    let mut o = json!({ "summary": summary });
    if let Some(role) = role {
        o["security"] = json!([{ "bearer": [] }]);
        o["x-stampede-role"] = json!(role);
        responses["401"] = error("Missing or unknown bearer token");
        responses["403"] = error("The token's role is too low");
    } else {
        o["security"] = json!([]);
    }
    o["responses"] = responses;
    o
}

/// Sets the response for `status` unless the operation already documents it.
fn add_response(o: &mut Value, status: &str, description: &str) {
    if o["responses"].get(status).is_none() {
        o["responses"][status] = error(description);
    }
}

/// A JSON request body. axum refuses a body before the handler sees it: 415 without a JSON
/// content type, 400 for malformed JSON, 422 when it does not fit the schema, 413 over 2 MB.
fn with_body(mut o: Value, schema: Value) -> Value {
    let mut body = json_body(schema);
    body["required"] = json!(true);
    o["requestBody"] = body;
    add_response(&mut o, "400", "Malformed JSON");
    add_response(&mut o, "413", "Body over 2 MB");
    add_response(&mut o, "415", "Not application/json");
    add_response(&mut o, "422", "Body does not fit the schema");
    o
}

/// Parameters; a path or query that cannot be decoded gets 400.
fn with_params(mut o: Value, params: Value) -> Value {
    o["parameters"] = params;
    add_response(&mut o, "400", "Bad parameter");
    o
}

fn outcome_header() -> Value {
    json!({ "stampede-outcome": { "description": "created, updated or unchanged",
            "schema": { "type": "string", "enum": ["created", "updated", "unchanged"] } } })
}

fn put_responses(schema: &str) -> Value {
    let mut created = ok("Created", schema_ref(schema));
    created["headers"] = outcome_header();
    let mut updated = ok("Updated or unchanged", schema_ref(schema));
    updated["headers"] = outcome_header();
    json!({ "200": updated, "201": created, "400": error("Bad request"),
            "409": error("Conflict"), "422": error("Invalid resource") })
}

fn list_of(schema: &str) -> Value {
    json!({ "type": "array", "items": schema_ref(schema) })
}

fn deleted() -> Value {
    json!({ "204": { "description": "Deleted" }, "404": error("Not found"),
            "409": error("In use") })
}

fn schemas() -> Value {
    let boot_target = json!({
        "type": "object",
        "properties": {
            "kernel": { "type": "string" },
            "initrds": { "type": "array", "items": { "type": "string" } },
            "cmdline": { "type": "string" }
        }
    });
    let arch = json!({ "type": "string",
        "enum": ["x86_bios", "efi_ia32", "efi_x64", "efi_arm32", "efi_arm64"] });
    let source = json!({ "type": "string", "enum": ["api", "file"], "readOnly": true,
        "description": "In lists: declared through the API, or in the appliance's configuration file (changed only there; an API entry with the same key replaces it)" });
    let mut schemas = json!({
        "Error": { "type": "object", "required": ["error"],
                   "properties": { "error": { "type": "string" } } },
        "Health": { "type": "object", "required": ["status", "machines", "profiles", "generation"],
            "properties": { "status": { "type": "string" }, "machines": { "type": "integer" },
                            "profiles": { "type": "integer" },
                            "generation": { "type": "integer", "format": "int64" },
                            "reload_error": { "type": "string",
                                "description": "Why the last reload was refused (status degraded)" },
                            "quarantined": { "type": "integer",
                                "description": "Stored entries left out of the boot plan" } } },
        "Arch": arch,
        "Machine": { "type": "object", "required": ["mac"], "additionalProperties": false,
            "properties": {
                "mac": mac_string(),
                "uuid": { "type": "string", "format": "uuid" },
                "arch": schema_ref("Arch"),
                "hostname": { "type": "string" },
                "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                "profile": { "type": "string" },
                "boot": { "type": "string", "enum": ["allow", "deny"], "default": "allow" },
                "ssh_authorized_keys": { "type": "array", "maxItems": 64,
                    "items": { "type": "string", "maxLength": 8192 },
                    "description": "Lines a diskless machine's node agent writes to /root/.ssh/authorized_keys" },
                "quarantined": { "type": "string", "readOnly": true,
                    "description": "In lists: why the appliance leaves this stored entry out of the boot plan" }
            } },
        "BootTarget": boot_target,
        "ImageSpec": { "type": "object", "required": ["name", "path"],
            "properties": { "name": name_string(),
                            "path": { "type": "string", "description": "File on the appliance" } } },
        "Lease": { "type": "object", "required": ["ip", "client", "mac", "state", "expires_ms"],
            "properties": { "ip": { "type": "string", "format": "ipv4" },
                            "client": { "type": "string", "description": "Hex client key" },
                            "mac": { "type": "string" },
                            "state": { "type": "string", "enum": ["offered", "bound", "declined"] },
                            "expires_ms": { "type": "integer", "format": "int64" } } },
        "AuditEntry": { "type": "object",
            "required": ["seq", "at_ms", "actor", "action", "target", "detail", "prev_hash", "hash"],
            "properties": { "seq": { "type": "integer" }, "at_ms": { "type": "integer" },
                            "actor": { "type": "string" }, "action": { "type": "string" },
                            "target": { "type": "string" }, "detail": {},
                            "prev_hash": { "type": "string" }, "hash": { "type": "string" } } },
        "AuditReport": { "type": "object", "required": ["entries", "head_hash"],
            "properties": { "entries": { "type": "integer" }, "head_hash": { "type": "string" },
                            "problem": { "type": "object", "nullable": true,
                                         "description": "First problem found; null when intact" } } },
        "Token": { "type": "object", "required": ["name", "role", "created_at_ms"],
            "properties": { "name": { "type": "string" }, "role": schema_ref("Role"),
                            "created_at_ms": { "type": "integer" },
                            "expires_at_ms": { "type": "integer", "format": "int64" } } },
        "Role": { "type": "string", "enum": ["read", "operator", "admin"] },
        "BootEvent": { "type": "object", "required": ["at_unix_ms", "client", "kind"],
            "description": "Common fields, then the fields of its kind: dhcp_reply (message, yiaddr, boot_file), tftp_started (file, blksize, windowsize), tftp_done (file, bytes, retransmits, duration_ms), tftp_failed (file, bytes, reason), http_response (path, status, bytes); a diskless node's steps root_manifest, root_chunks, root_mounted, switch_root and root_failed (detail); refused (by: dhcp or xdp, reason), sampled per machine and reason",
            "properties": {
                "at_unix_ms": { "type": "integer", "format": "int64" },
                "mac": { "type": "string", "nullable": true,
                         "description": "Null when the client's address maps to no DHCP reply" },
                "client": { "type": "string", "example": "10.0.0.50:2070" },
                "kind": { "type": "string", "enum": ["dhcp_reply", "tftp_started", "tftp_done",
                                                     "tftp_failed", "http_response",
                                                     "root_manifest", "root_chunks",
                                                     "root_mounted", "switch_root",
                                                     "root_failed", "refused"] },
                "detail": { "type": "string" },
                "by": { "type": "string", "enum": ["dhcp", "xdp"] },
                "message": { "type": "string", "enum": ["offer", "ack", "nak"] },
                "yiaddr": { "type": "string", "format": "ipv4" },
                "boot_file": { "type": "string" },
                "file": { "type": "string" }, "path": { "type": "string" },
                "blksize": { "type": "integer" }, "windowsize": { "type": "integer" },
                "bytes": { "type": "integer", "format": "int64" },
                "retransmits": { "type": "integer" },
                "duration_ms": { "type": "integer", "format": "int64" },
                "reason": { "type": "string" }, "status": { "type": "integer" }
            } },
        "StageSpan": { "type": "object",
            "required": ["stage", "first_unix_ms", "last_unix_ms", "events", "bytes", "failures", "retransmits"],
            "properties": { "stage": { "type": "string", "enum": ["dhcp", "tftp", "http", "root"] },
                            "first_unix_ms": { "type": "integer", "format": "int64" },
                            "last_unix_ms": { "type": "integer", "format": "int64" },
                            "events": { "type": "integer" }, "bytes": { "type": "integer" },
                            "failures": { "type": "integer" }, "retransmits": { "type": "integer" } } },
        "StageGap": { "type": "object", "required": ["from", "to", "gap_ms"],
            "properties": { "from": { "type": "string" }, "to": { "type": "string" },
                            "gap_ms": { "type": "integer", "format": "int64" } } },
        "SessionSummary": { "type": "object",
            "required": ["mac", "boot", "first_unix_ms", "last_unix_ms", "duration_ms", "events",
                         "dropped_events", "stages", "outcome", "last_event"],
            "properties": {
                "mac": { "type": "string" },
                "ip": { "type": "string", "format": "ipv4", "nullable": true },
                "boot": { "type": "integer", "description": "1, then +1 each time the machine starts over" },
                "first_unix_ms": { "type": "integer", "format": "int64" },
                "last_unix_ms": { "type": "integer", "format": "int64" },
                "duration_ms": { "type": "integer", "format": "int64" },
                "events": { "type": "integer" },
                "dropped_events": { "type": "integer" },
                "stages": { "type": "array", "items": schema_ref("StageSpan") },
                "outcome": { "type": "string", "enum": ["ok", "transferring", "failed"] },
                "last_event": { "type": "string" }
            } },
        "TimelineEntry": { "allOf": [schema_ref("BootEvent"), { "type": "object",
            "required": ["since_prev_ms", "since_start_ms"],
            "properties": { "since_prev_ms": { "type": "integer", "format": "int64" },
                            "since_start_ms": { "type": "integer", "format": "int64" } } }] },
        "SessionTimeline": { "allOf": [schema_ref("SessionSummary"), { "type": "object",
            "required": ["gaps", "timeline"],
            "properties": {
                "gaps": { "type": "array", "items": schema_ref("StageGap") },
                "longest_wait": { "allOf": [schema_ref("TimelineEntry")], "nullable": true },
                "timeline": { "type": "array", "items": schema_ref("TimelineEntry") }
            } }] },
        "NewToken": { "type": "object", "required": ["name", "role"],
            "properties": { "name": name_string(), "role": schema_ref("Role"),
                            "expires_in_s": { "type": "integer", "minimum": 0,
                                "description": "Seconds until the token stops working; none: until revoked" } } },
        "IssuedToken": { "type": "object", "required": ["name", "role", "token"],
            "properties": { "name": { "type": "string" }, "role": schema_ref("Role"),
                            "token": { "type": "string", "description": "Shown once" } } }
    });
    // Apart: one json! of every schema exceeds the macro recursion limit.
    schemas["RootImage"] = json!({ "type": "object",
            "required": ["name", "image", "root_id", "source", "kernel_release", "chunks", "bytes",
                         "initrd_bytes", "kernel", "initrd", "roots_dir", "imported_at_ms"],
            "properties": { "name": { "type": "string" },
                            "image": { "type": "string", "description": "sha256:HEX of the image manifest" },
                            "root_id": { "type": "string" }, "source": { "type": "string" },
                            "kernel_release": { "type": "string" },
                            "chunks": { "type": "integer" }, "bytes": { "type": "integer" },
                            "initrd_bytes": { "type": "integer" },
                            "kernel": { "type": "string" }, "initrd": { "type": "string" },
                            "roots_dir": { "type": "string" },
                            "imported_at_ms": { "type": "integer", "format": "int64" } } });
    schemas["ImportRequest"] = json!({ "type": "object", "required": ["source"], "additionalProperties": false,
            "properties": { "name": { "type": "string", "nullable": true,
                                      "description": "Needed for a file or URL; a root defaults to its source's repo:tag or file name" },
                            "source": { "type": "string", "description": "Absolute path of a file on the appliance, an http:// or https:// URL, or an OCI image (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, docker://REGISTRY/REPO:TAG) that becomes a diskless root" },
                            "sha256": { "type": "string", "nullable": true, "pattern": SHA256_PATTERN,
                                        "description": "Files and URLs: hex SHA-256 the content must have; otherwise the import fails and stores nothing" },
                            "ca_pem": { "type": "string", "nullable": true, "description": "docker://: CA certificates (PEM) for the registry's https" },
                            "credentials": { "type": "string", "nullable": true, "description": "docker://: USER:PASSWORD" },
                            "plain_http": { "type": "boolean", "default": false, "description": "docker://: plain http" } } });
    schemas["ImportJob"] = json!({ "type": "object",
            "required": ["id", "name", "source", "state", "bytes_done", "bytes_total", "sha256",
                         "expected_sha256", "outcome", "error", "started_at_ms", "finished_at_ms"],
            "properties": {
                "id": { "type": "integer", "format": "int64" },
                "name": { "type": "string" }, "source": { "type": "string" },
                "kind": { "type": "string", "enum": ["file", "root"] },
                "state": { "type": "string", "enum": ["running", "done", "failed"] },
                "stage": { "type": "string", "enum": ["pulling", "building"],
                           "description": "A running root import's step" },
                "root": schema_ref("RootImage"),
                "bytes_done": { "type": "integer", "format": "int64" },
                "bytes_total": { "type": "integer", "format": "int64", "nullable": true,
                                 "description": "The source's size when the import started; null when an HTTP server did not say" },
                "sha256": { "type": "string", "nullable": true, "description": "Set when done" },
                "expected_sha256": { "type": "string", "nullable": true },
                "outcome": { "type": "string", "enum": ["created", "updated", "unchanged"], "nullable": true,
                             "description": "Set when done: unchanged when the store already held this content" },
                "error": { "type": "string", "nullable": true, "description": "Set when failed" },
                "started_at_ms": { "type": "integer", "format": "int64" },
                "finished_at_ms": { "type": "integer", "format": "int64", "nullable": true } } });
    schemas["Image"] = json!({ "type": "object", "required": ["sha256", "name", "path", "size", "registered_at_ms", "kind"],
            "properties": { "sha256": { "type": "string", "description": "A root's: its OCI image digest" },
                            "name": { "type": "string" },
                            "path": { "type": "string" }, "size": { "type": "integer" },
                            "registered_at_ms": { "type": "integer", "format": "int64" },
                            "kind": { "type": "string", "enum": ["file", "root"] },
                            "root": schema_ref("RootImage") } });
    schemas["Profile"] = json!({ "type": "object", "required": ["name"],
            "description": "kernel is needed unless root is given",
            "properties": {
                "name": name_string(),
                "root": { "type": "string",
                          "description": "A diskless root: an imported root's name, or sha256:DIGEST (then no initrds)" },
                "kernel": { "type": "string" },
                "initrds": { "type": "array", "items": { "type": "string" } },
                "cmdline": { "type": "string" },
                "ipxe_template": { "type": "string" },
                "secure_boot": { "type": "string", "enum": ["shim"],
                                 "description": "x86-64 UEFI PXE machines boot the distribution's signed chain (shim, GRUB, a signed kernel)" },
                "variants": { "type": "object", "description": "Keyed by Arch",
                              "additionalProperties": schema_ref("BootTarget") },
                "quarantined": { "type": "string", "readOnly": true,
                    "description": "In lists: why the appliance leaves this stored entry out of the boot plan" }
            } });
    for entry in ["Machine", "Profile"] {
        schemas[entry]["properties"]["source"] = source.clone();
    }
    // Each millisecond time these answers carry has an RFC 3339 twin (`timestamp::with_rfc3339`).
    for name in [
        "Lease",
        "AuditEntry",
        "Token",
        "BootEvent",
        "StageSpan",
        "SessionSummary",
        "Image",
        "RootImage",
        "ImportJob",
    ] {
        let properties = &mut schemas[name]["properties"];
        for (ms, twin) in crate::timestamp::TIME_FIELDS {
            if properties.get(*ms).is_some() {
                properties[*twin] = json!({ "type": "string", "format": "date-time", "readOnly": true,
                    "description": format!("{ms} as RFC 3339 (UTC)"), "example": "2026-12-07T18:40:00.000Z" });
            }
        }
    }
    schemas
}

/// The document served at `/api/v1/openapi.json`.
pub fn document() -> Value {
    let read = Some("read");
    let operator = Some("operator");
    let admin = Some("admin");
    let mut mac_path = path_param("mac", "aa:bb:cc:dd:ee:ff");
    mac_path["schema"] = mac_string();
    let mac = json!([mac_path]);
    let mac_param = mac.clone();
    let name = json!([path_param("name", "Profile name")]);
    let sha = json!([path_param(
        "sha256",
        "Hex SHA-256 of a file image, or a root's name (percent-encoded) or image digest"
    )]);
    let token_name = json!([path_param("name", "Token name")]);
    let not_found = || error("Not found");
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Stampede control API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Machines, boot profiles, images and leases of a Stampede network-boot appliance." },
        // Relative: the document is right wherever it is served from, over HTTP or HTTPS.
        "servers": [{ "url": "/" }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        },
        "paths": {
            "/api/v1/health": {
                "get": op("Liveness and fleet size", None,
                          json!({ "200": ok("Healthy", schema_ref("Health")) }))
            },
            "/api/v1/openapi.json": {
                "get": op("This document", None,
                          json!({ "200": ok("OpenAPI 3 document", json!({ "type": "object" })) }))
            },
            "/metrics": {
                "get": op("Prometheus metrics (text format 0.0.4)", read, json!({ "200": {
                    "description": "Metrics",
                    "content": { "text/plain": { "schema": { "type": "string" } } } } }))
            },
            "/api/v1/machines": {
                "get": with_params(op("List machines", read, json!({ "200": ok("Machines", list_of("Machine")) })),
                    json!([{ "name": "selector", "in": "query", "required": false,
                             "description": "Only machines whose labels match: comma-separated key=value, key!=value, key, !key (all must hold)",
                             "schema": { "type": "string" }, "example": "rack=r1,role!=db" }])),
                "post": with_body(op("Add a machine (409 if it exists)", operator, put_responses("Machine")),
                                  schema_ref("Machine"))
            },
            "/api/v1/machines/{mac}": {
                "get": with_params(op("Get a machine", read,
                    json!({ "200": ok("Machine", schema_ref("Machine")), "400": error("Bad MAC"),
                            "404": not_found() })), mac.clone()),
                "put": with_params(with_body(op("Create or replace a machine", operator,
                    put_responses("Machine")), schema_ref("Machine")), mac.clone()),
                "delete": with_params(op("Remove a machine", operator, deleted()), mac)
            },
            "/api/v1/profiles": {
                "get": op("List boot profiles", read, json!({ "200": ok("Profiles", list_of("Profile")) })),
                "post": with_body(op("Add a boot profile (409 if it exists)", operator,
                                     put_responses("Profile")), schema_ref("Profile"))
            },
            "/api/v1/profiles/{name}": {
                "get": with_params(op("Get a boot profile", read,
                    json!({ "200": ok("Profile", schema_ref("Profile")), "404": not_found() })), name.clone()),
                "put": with_params(with_body(op("Create or replace a boot profile", operator,
                    put_responses("Profile")), schema_ref("Profile")), name.clone()),
                "delete": with_params(op("Remove a boot profile no machine uses", operator, deleted()), name)
            },
            "/api/v1/images": {
                "get": op("List images", read, json!({ "200": ok("Images", list_of("Image")) })),
                "post": with_body(op("Register a file on the appliance as an image (hashed)", operator,
                                     put_responses("Image")), schema_ref("ImageSpec"))
            },
            "/api/v1/images/imports": {
                "get": op("Image imports since the appliance started", read,
                          json!({ "200": ok("Import jobs", list_of("ImportJob")) })),
                "post": with_body(op("Import a file on the appliance or a URL into the image store, or build a diskless root from an OCI image; returns at once", operator, json!({
                    "202": { "description": "Import started; follow it at Location or on /api/v1/events (event image_import)",
                             "headers": { "Location": { "description": "URL of the job",
                                                        "schema": { "type": "string" } } },
                             "content": { "application/json": { "schema": schema_ref("ImportJob") } } },
                    "400": error("Malformed body"),
                    "422": error("Bad name, sha256 or source (missing, not a regular file, unreadable, an HTTP error)"),
                    "429": error("Too many imports running"),
                    "503": error("No image store on this appliance") })),
                    schema_ref("ImportRequest"))
            },
            "/api/v1/images/imports/{id}": {
                "get": with_params(op("One import's progress", read,
                    json!({ "200": ok("Import job", schema_ref("ImportJob")), "404": not_found() })),
                    json!([path_param("id", "Job id")]))
            },
            "/api/v1/images/{sha256}": {
                "get": with_params(op("Get an image", read,
                    json!({ "200": ok("Image", schema_ref("Image")), "404": not_found() })), sha.clone()),
                "delete": with_params(op("Forget a root (by name; 409 while an API profile boots it) or a file image (by SHA-256); files on disk stay", operator, deleted()), sha)
            },
            "/api/v1/leases": {
                "get": op("Committed DHCP leases", read, json!({ "200": ok("Leases", list_of("Lease")) }))
            },
            "/api/v1/sessions": {
                "get": op("Boot sessions, most recently active first", read,
                          json!({ "200": ok("Sessions", list_of("SessionSummary")) }))
            },
            "/api/v1/sessions/{mac}": {
                "get": with_params(op("One machine's boot timeline, with the gaps between stages", read,
                    json!({ "200": ok("Timeline", schema_ref("SessionTimeline")), "400": error("Bad MAC"),
                            "404": not_found() })), mac_param.clone())
            },
            "/api/v1/events": {
                "get": with_params(op("Boot events as they happen (Server-Sent Events)", read, json!({
                    "200": { "description": "One SSE event per boot event: `event:` is its kind, \
                        `data:` a BootEvent as JSON. Without `mac`, also `event: image_import` \
                        with an ImportJob as data at an import's start, every 250 ms while it \
                        runs and at its end. `event: lagged` with data {\"missed\": n} \
                        when this reader fell behind.",
                        "content": { "text/event-stream": { "schema": schema_ref("BootEvent") } } },
                    "400": error("Bad MAC") })),
                    json!([{ "name": "mac", "in": "query", "required": false,
                             "description": "Only this machine's events",
                             "schema": { "type": "string" } }]))
            },
            "/api/v1/audit": {
                "get": with_params(op("Audit entries, oldest first", read,
                    json!({ "200": ok("Entries", list_of("AuditEntry")) })),
                    json!([
                        { "name": "after", "in": "query", "schema": { "type": "integer", "default": 0 } },
                        { "name": "limit", "in": "query",
                          "schema": { "type": "integer", "default": 1000, "maximum": 1000 } }
                    ]))
            },
            "/api/v1/audit/verify": {
                "get": op("Verify the audit hash chain", read,
                          json!({ "200": ok("Report", schema_ref("AuditReport")) }))
            },
            "/api/v1/backup": {
                "get": op("A consistent copy of the state file, itself a redb state file \
                           (taken in one read transaction while serving; audited as \
                           state.backup; header stampede-backup-summary counts its records)",
                          admin,
                          json!({ "200": { "description": "The state file",
                                           "content": { "application/octet-stream": {
                                               "schema": { "type": "string",
                                                           "format": "binary" } } } } }))
            },
            "/api/v1/tokens": {
                "get": op("List tokens (never the tokens themselves)", admin,
                          json!({ "200": ok("Tokens", list_of("Token")) })),
                "post": with_body(op("Issue a token", admin, json!({
                    "201": ok("The token, shown once", schema_ref("IssuedToken")),
                    "409": error("Name taken"), "422": error("Invalid name") })),
                    schema_ref("NewToken"))
            },
            "/api/v1/tokens/{name}": {
                "delete": with_params(op("Revoke a token", admin, deleted()), token_name)
            }
        }
    })
}
