// Entry point of the churn extension: runs once while the snapshot is built.
import "ext:churn_fn/00_globals.js";
import "ext:churn_fn/10_function.js";
