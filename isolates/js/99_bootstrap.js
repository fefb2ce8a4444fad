// Entry point of the churn extensions: runs once while the snapshot is built.
import "ext:churn_fn/00_globals.js";
import "ext:churn_fn/05_http.js";
import "ext:churn_fn/10_function.js";
import "ext:churn_fn/20_do_storage.js";
import "ext:churn_fn/21_do_sockets.js";
import "ext:churn_fn/22_durable_object.js";
