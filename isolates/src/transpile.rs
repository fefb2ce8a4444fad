//! TypeScript → JavaScript for deployed code (deno_ast/swc), with the checks a
//! function's source must pass before it is accepted.

use std::sync::Arc;

use deno_ast::swc::ast::{
    Decl, DefaultDecl, ExportSpecifier, Expr, ModuleDecl, ModuleExportName, ModuleItem, Pat, Prop,
    PropName, PropOrSpread,
};
use deno_ast::SourceRangedForSpanned;
use deno_ast::{
    EmitOptions, MediaType, ModuleSpecifier, ParseDiagnostic, ParseParams, ParsedSource,
    SourceMapOption, TranspileModuleOptions, TranspileOptions,
};

use crate::error::CompileError;

pub(crate) fn syntax_error(d: &ParseDiagnostic) -> CompileError {
    let pos = d.display_position();
    CompileError::Syntax {
        line: pos.line_number,
        column: pos.column_number,
        message: d.kind().msg().to_string(),
    }
}

pub(crate) fn parse(source: &str) -> Result<ParsedSource, CompileError> {
    let specifier = ModuleSpecifier::parse("file:///function.ts")
        .map_err(|e| CompileError::Transpile(e.to_string()))?;
    let parsed = deno_ast::parse_module(ParseParams {
        specifier,
        text: Arc::from(source),
        media_type: MediaType::TypeScript,
        capture_tokens: false,
        scope_analysis: false,
        maybe_syntax: None,
    })
    .map_err(|d| syntax_error(&d))?;
    if let Some(d) = parsed.diagnostics().first() {
        return Err(syntax_error(d));
    }
    Ok(parsed)
}

pub(crate) fn export_name(name: &ModuleExportName) -> String {
    match name {
        ModuleExportName::Ident(ident) => ident.sym.to_string(),
        ModuleExportName::Str(s) => s.value.to_string_lossy().to_string(),
    }
}

fn object_has_fetch(expr: &Expr) -> bool {
    let Expr::Object(object) = expr else {
        return false;
    };
    object.props.iter().any(|p| match p {
        PropOrSpread::Prop(prop) => match &**prop {
            Prop::Method(m) => matches!(&m.key, PropName::Ident(i) if i.sym == *"fetch"),
            Prop::KeyValue(kv) => matches!(&kv.key, PropName::Ident(i) if i.sym == *"fetch"),
            Prop::Shorthand(i) => i.sym == *"fetch",
            _ => false,
        },
        PropOrSpread::Spread(_) => false,
    })
}

/// Checks that the module exports an entry point and imports nothing.
fn check_function_module(parsed: &ParsedSource) -> Result<(), CompileError> {
    let module = match parsed.program_ref() {
        deno_ast::ProgramRef::Module(m) => m,
        deno_ast::ProgramRef::Script(_) => return Err(CompileError::NoHandler),
    };
    let mut has_handler = false;
    for item in &module.body {
        let ModuleItem::ModuleDecl(decl) = item else {
            continue;
        };
        match decl {
            ModuleDecl::Import(import) if !import.type_only => {
                let line = parsed
                    .text_info_lazy()
                    .line_and_column_display(import.start())
                    .line_number;
                return Err(CompileError::Import {
                    specifier: import.src.value.to_string_lossy().to_string(),
                    line,
                });
            }
            ModuleDecl::ExportDecl(export) => match &export.decl {
                Decl::Fn(f) if f.ident.sym == *"handler" => has_handler = true,
                Decl::Var(v) => {
                    for d in &v.decls {
                        if let Pat::Ident(binding) = &d.name {
                            if binding.id.sym == *"handler" {
                                has_handler = true;
                            }
                        }
                    }
                }
                _ => {}
            },
            ModuleDecl::ExportNamed(named) if named.src.is_none() => {
                for spec in &named.specifiers {
                    if let ExportSpecifier::Named(n) = spec {
                        let exported = n.exported.as_ref().unwrap_or(&n.orig);
                        let name = export_name(exported);
                        if name == "handler" || name == "default" {
                            has_handler = true;
                        }
                    }
                }
            }
            ModuleDecl::ExportDefaultDecl(d) => {
                if matches!(d.decl, DefaultDecl::Fn(_)) {
                    has_handler = true;
                }
            }
            ModuleDecl::ExportDefaultExpr(e) => match &*e.expr {
                Expr::Arrow(_) | Expr::Fn(_) | Expr::Ident(_) => has_handler = true,
                other if object_has_fetch(other) => has_handler = true,
                _ => {}
            },
            _ => {}
        }
    }
    if has_handler {
        Ok(())
    } else {
        Err(CompileError::NoHandler)
    }
}

/// Parses, checks and transpiles a function's TypeScript to an ES module.
pub fn compile_function(source: &str) -> Result<String, CompileError> {
    let parsed = parse(source)?;
    check_function_module(&parsed)?;
    emit(parsed)
}

/// Transpiles checked source to JavaScript (types stripped, inline source map).
pub(crate) fn emit(parsed: ParsedSource) -> Result<String, CompileError> {
    let emitted = parsed
        .transpile(
            &TranspileOptions::default(),
            &TranspileModuleOptions::default(),
            &EmitOptions {
                source_map: SourceMapOption::Inline,
                ..Default::default()
            },
        )
        .map_err(|e| match e {
            deno_ast::TranspileError::ParseErrors(errors) => match errors.0.first() {
                Some(d) => syntax_error(d),
                None => CompileError::Transpile("parse error".to_string()),
            },
            other => CompileError::Transpile(other.to_string()),
        })?;
    Ok(emitted.into_source().text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_entry_point_forms() {
        for src in [
            "export async function handler(req: Request) { return new Response('x'); }",
            "export const handler = async () => new Response('x');",
            "const h = () => new Response('x'); export { h as handler };",
            "export default async function (req: Request) { return new Response('x'); }",
            "export default { async fetch(req: Request) { return new Response('x'); } };",
            "import type { Foo } from './types.ts'; export function handler() { return new Response('x'); }",
        ] {
            assert_eq!(compile_function(src).map(|_| ()), Ok(()), "{src}");
        }
    }

    #[test]
    fn strips_types() {
        let js = compile_function(
            "enum Color { Red = 1 }\ninterface A { x: number }\nexport function handler(a: A): Response { return new Response(String(Color.Red)); }",
        )
        .expect("compiles");
        assert!(!js.contains("interface"));
        assert!(js.contains("Color"));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = compile_function("export function handler() {\n  return new Response('x';\n}\n")
            .expect_err("must fail");
        match err {
            CompileError::Syntax { line, column, .. } => {
                assert_eq!(line, 2);
                assert!(column > 1, "column {column}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refuses_missing_handler_and_imports() {
        assert_eq!(
            compile_function("export function other() {}"),
            Err(CompileError::NoHandler)
        );
        assert!(matches!(
            compile_function("import x from 'npm:left-pad';\nexport function handler() {}"),
            Err(CompileError::Import { line: 1, .. })
        ));
    }
}
