package embed_test

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The exported API of the public packages (what `go doc -all` shows) names no type,
// function or constant of an internal package, and its documentation points to none.
func TestPublicAPIMentionsNoInternalPackage(t *testing.T) {
	for _, name := range []string{"outbox", "inbox", "relay"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("..", "..", name)
			paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
			if err != nil {
				t.Fatal(err)
			}
			fset := token.NewFileSet()
			var files []*ast.File
			internal := map[string]string{} // local name → import path
			for _, p := range paths {
				if strings.HasSuffix(p, "_test.go") {
					continue
				}
				f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
				if err != nil {
					t.Fatal(err)
				}
				files = append(files, f)
				for _, imp := range f.Imports {
					path, _ := strconv.Unquote(imp.Path.Value)
					if !strings.Contains(path, "/internal/") {
						continue
					}
					local := path[strings.LastIndex(path, "/")+1:]
					if imp.Name != nil {
						local = imp.Name.Name
					}
					internal[local] = path
				}
			}
			if len(files) == 0 {
				t.Fatalf("no Go files in %s", dir)
			}
			pkg, err := doc.NewFromFiles(fset, files, "github.com/sidebox/sidebox/"+name)
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, node ast.Node, comment string) {
				if strings.Contains(comment, "internal/") {
					t.Errorf("the documentation of %s mentions an internal package: %q", what, comment)
				}
				if node == nil {
					return
				}
				ast.Inspect(node, func(n ast.Node) bool {
					if sel, ok := n.(*ast.SelectorExpr); ok {
						if id, ok := sel.X.(*ast.Ident); ok && internal[id.Name] != "" {
							t.Errorf("%s uses %s.%s of %s", what, id.Name, sel.Sel.Name, internal[id.Name])
						}
					}
					return true
				})
			}
			check("the package", nil, pkg.Doc)
			values := func(vs []*doc.Value) {
				for _, v := range vs {
					check(strings.Join(v.Names, ", "), v.Decl, v.Doc)
				}
			}
			funcs := func(fs []*doc.Func) {
				for _, f := range fs {
					check(f.Name, f.Decl, f.Doc) // go/doc drops the bodies
				}
			}
			values(pkg.Consts)
			values(pkg.Vars)
			funcs(pkg.Funcs)
			for _, typ := range pkg.Types {
				check(typ.Name, typ.Decl, typ.Doc)
				values(typ.Consts)
				values(typ.Vars)
				funcs(typ.Funcs)
				funcs(typ.Methods)
			}
		})
	}
}
