//! The checks a Durable Object's source must pass: exactly one exported class,
//! no other exports, no default export, and no imports but
//! `cloudflare:workers`. Each failure has the stable code clients match on.

use deno_ast::swc::ast::{Decl, ExportSpecifier, ModuleDecl, ModuleItem, Stmt};
use deno_ast::SourceRangedForSpanned;

use crate::error::CompileError;
use crate::transpile::{emit, export_name, parse};

/// Most source one class may have.
pub const MAX_SOURCE_BYTES: usize = 5 * 1024 * 1024;

/// Why a Durable Object's source was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectSourceError {
    #[error("{0}")]
    Syntax(CompileError),
    #[error("the code exports no class: add `export class MyObject {{ async fetch(request) {{ ... }} }}`")]
    NoExportedClass,
    #[error("a Durable Object module exports exactly one class and nothing else; found {0}")]
    MultipleExportedClasses(String),
    #[error(
        "`export default` is not supported: export the class by name (`export class {0} ...`)"
    )]
    ExportDefaultNotSupported(String),
    #[error("import of {specifier:?} at line {line} is not allowed: only \"cloudflare:workers\" may be imported")]
    DisallowedImport { specifier: String, line: usize },
    #[error("class name {0:?} must be PascalCase (e.g. ChatRoom)")]
    InvalidClassName(String),
    #[error("the source is {0} bytes; the limit is 5 MiB")]
    SourceTooLarge(usize),
}

impl ObjectSourceError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ObjectSourceError::Syntax(_) => "VALIDATION_INVALID_SCHEMA",
            ObjectSourceError::NoExportedClass => "NO_EXPORTED_CLASS",
            ObjectSourceError::MultipleExportedClasses(_) => "MULTIPLE_EXPORTED_CLASSES",
            ObjectSourceError::ExportDefaultNotSupported(_) => "EXPORT_DEFAULT_NOT_SUPPORTED",
            ObjectSourceError::DisallowedImport { .. } => "DISALLOWED_IMPORT",
            ObjectSourceError::InvalidClassName(_) => "INVALID_NAME",
            ObjectSourceError::SourceTooLarge(_) => "SOURCE_TOO_LARGE",
        }
    }
}

/// A checked, transpiled Durable Object class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledObject {
    pub class_name: String,
    pub js: String,
}

fn is_pascal_case(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// Parses, checks and transpiles a Durable Object class.
pub fn compile_durable_object(source: &str) -> Result<CompiledObject, ObjectSourceError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ObjectSourceError::SourceTooLarge(source.len()));
    }
    let parsed = parse(source).map_err(ObjectSourceError::Syntax)?;
    let module = match parsed.program_ref() {
        deno_ast::ProgramRef::Module(m) => m,
        deno_ast::ProgramRef::Script(_) => return Err(ObjectSourceError::NoExportedClass),
    };
    // Classes declared at the top level, to tell `export { Foo }` apart.
    let declared_classes: Vec<String> = module
        .body
        .iter()
        .filter_map(|item| match item {
            ModuleItem::Stmt(Stmt::Decl(Decl::Class(c))) => Some(c.ident.sym.to_string()),
            _ => None,
        })
        .collect();
    let mut classes: Vec<String> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for item in &module.body {
        let ModuleItem::ModuleDecl(decl) = item else {
            continue;
        };
        match decl {
            ModuleDecl::Import(import) => {
                let specifier = import.src.value.to_string_lossy().to_string();
                if !import.type_only && specifier != "cloudflare:workers" {
                    let line = parsed
                        .text_info_lazy()
                        .line_and_column_display(import.start())
                        .line_number;
                    return Err(ObjectSourceError::DisallowedImport { specifier, line });
                }
            }
            ModuleDecl::ExportDecl(export) => match &export.decl {
                Decl::Class(c) => classes.push(c.ident.sym.to_string()),
                Decl::TsInterface(_) | Decl::TsTypeAlias(_) => {}
                Decl::Fn(f) => others.push(format!("function {}", f.ident.sym)),
                Decl::Var(_) => others.push("a variable".to_string()),
                _ => others.push("another declaration".to_string()),
            },
            ModuleDecl::ExportNamed(named) => {
                if named.type_only {
                    continue;
                }
                for spec in &named.specifiers {
                    match spec {
                        ExportSpecifier::Named(n) if !n.is_type_only => {
                            let local = export_name(&n.orig);
                            let exported = n
                                .exported
                                .as_ref()
                                .map(export_name)
                                .unwrap_or(local.clone());
                            if named.src.is_none() && declared_classes.contains(&local) {
                                classes.push(exported);
                            } else {
                                others.push(format!("export {exported}"));
                            }
                        }
                        ExportSpecifier::Named(_) => {}
                        _ => others.push("a namespace export".to_string()),
                    }
                }
            }
            ModuleDecl::ExportDefaultDecl(d) => {
                let name = match &d.decl {
                    deno_ast::swc::ast::DefaultDecl::Class(c) => c
                        .ident
                        .as_ref()
                        .map(|i| i.sym.to_string())
                        .unwrap_or_else(|| "MyObject".to_string()),
                    _ => "MyObject".to_string(),
                };
                return Err(ObjectSourceError::ExportDefaultNotSupported(name));
            }
            ModuleDecl::ExportDefaultExpr(_) => {
                return Err(ObjectSourceError::ExportDefaultNotSupported(
                    "MyObject".to_string(),
                ))
            }
            ModuleDecl::ExportAll(_) => others.push("export *".to_string()),
            _ => {}
        }
    }
    if classes.len() > 1 || (!classes.is_empty() && !others.is_empty()) {
        let mut found: Vec<String> = classes.iter().map(|c| format!("class {c}")).collect();
        found.extend(others);
        return Err(ObjectSourceError::MultipleExportedClasses(found.join(", ")));
    }
    let Some(class_name) = classes.pop() else {
        if !others.is_empty() {
            return Err(ObjectSourceError::MultipleExportedClasses(
                others.join(", "),
            ));
        }
        return Err(ObjectSourceError::NoExportedClass);
    };
    if !is_pascal_case(&class_name) {
        return Err(ObjectSourceError::InvalidClassName(class_name));
    }
    let js = emit(parsed).map_err(ObjectSourceError::Syntax)?;
    Ok(CompiledObject { class_name, js })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(src: &str) -> &'static str {
        match compile_durable_object(src) {
            Ok(_) => "OK",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn each_rule_has_its_code() {
        assert_eq!(
            code_of("export class ChatRoom { async fetch() { return new Response('x'); } }"),
            "OK"
        );
        assert_eq!(
            code_of("import { DurableObject } from 'cloudflare:workers';\nexport class Counter extends DurableObject {}"),
            "OK"
        );
        assert_eq!(code_of("class A {} export { A };"), "OK");
        assert_eq!(
            code_of("export interface X { a: number }\nexport class A {}"),
            "OK"
        );
        assert_eq!(code_of("class A {}"), "NO_EXPORTED_CLASS");
        assert_eq!(
            code_of("export class A {} export class B {}"),
            "MULTIPLE_EXPORTED_CLASSES"
        );
        assert_eq!(
            code_of("export class A {} export const x = 1;"),
            "MULTIPLE_EXPORTED_CLASSES"
        );
        assert_eq!(
            code_of("export function f() {}"),
            "MULTIPLE_EXPORTED_CLASSES"
        );
        assert_eq!(
            code_of("export default class A {}"),
            "EXPORT_DEFAULT_NOT_SUPPORTED"
        );
        assert_eq!(
            code_of("import x from 'npm:lodash';\nexport class A {}"),
            "DISALLOWED_IMPORT"
        );
        assert_eq!(code_of("export class chatRoom {}"), "INVALID_NAME");
        assert_eq!(code_of("export class A {"), "VALIDATION_INVALID_SCHEMA");
        let big = format!("export class A {{}}\n//{}", "x".repeat(MAX_SOURCE_BYTES));
        assert_eq!(code_of(&big), "SOURCE_TOO_LARGE");
    }
}
