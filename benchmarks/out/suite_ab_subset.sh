set -u
FILES="tests/test_cli.py tests/test_api.py tests/test_plugins.py tests/test_reliability.py tests/test_export.py tests/test_packaging.py"
for side in old new; do
  dir=/tmp/suite/old; [ $side = new ] && dir=/work/wt-suite
  cd $dir
  echo "== $side start $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "$side wall %e s" python3 -m pytest -q -m "not slow" -p no:cacheprovider $FILES 2>&1 | tail -2
  echo "== $side end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
done
