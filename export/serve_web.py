"""Serves a run's browser page (<run_dir>/export/web/, built by the export stage or `make web`) on localhost.

    python -m export.serve_web --run_dir=runs/demo            # then open the printed http://127.0.0.1:PORT/
    python -m export.serve_web --run_dir=runs/demo --build    # (re)build export/web/ first (needs `make web`)
    python -m export.serve_web --run_dir=runs/demo --build --noserve   # only (re)build it

Any static server works as well (the page needs .wasm served as application/wasm); opening index.html as a
file:// URL does not (browsers refuse ES modules and fetch() from file://).
"""
import os

from absl import app, flags

from trainers.common import EXIT_USAGE, define_verbose_flag, guarded, run_script  # noqa: E402  (one error boundary per script)

flags.DEFINE_string("run_dir", None, "Run directory; its export/web/ folder is served.")
flags.DEFINE_string("dir", None, "Instead of --run_dir: the folder to serve.")
flags.DEFINE_integer("port", 8000, "Port (0 = any free port).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (localhost by default).")
flags.DEFINE_boolean("build", False,
                     "Build (or rebuild) <run_dir>/export/web/ from web/src and web/node_modules first.")
flags.DEFINE_boolean("serve", True, "Serve the page (--noserve: only build it, e.g. `make demo`).")
FLAGS = flags.FLAGS
define_verbose_flag()


@guarded
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=EXIT_USAGE)
    if bool(FLAGS.run_dir) == bool(FLAGS.dir):
        raise app.UsageError("give exactly one of --run_dir or --dir", exitcode=EXIT_USAGE)
    from face_transfer.core.runpaths import RunPaths
    from face_transfer.deploy import web

    paths = RunPaths(FLAGS.run_dir).export if FLAGS.run_dir else None
    directory = FLAGS.dir or paths.web_dir
    if paths and (FLAGS.build or not os.path.isfile(paths.web_index)):
        export_dir = paths.root
        if not os.path.isfile(paths.analyzer_tflite):
            raise app.UsageError(f"--run_dir={FLAGS.run_dir}: no export/analyzer_int8.tflite (run the pipeline "
                                 "first)", exitcode=EXIT_USAGE)
        ok, reason = web.web_status()
        if not ok:
            raise app.UsageError(reason, exitcode=EXIT_USAGE)
        page = web.build_web_page(export_dir)
        print(f"Built {page['dir']}/index.html (LiteRT.js {page['litert_version']})", flush=True)
    if not FLAGS.serve:
        return 0
    if not os.path.isfile(os.path.join(directory, "index.html")):
        raise app.UsageError(f"{directory} has no index.html", exitcode=EXIT_USAGE)
    server = web.make_server(directory, FLAGS.port, FLAGS.host)
    host, port = server.server_address[:2]
    print(f"Serving {directory} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    run_script(main)
