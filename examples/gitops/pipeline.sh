#!/bin/sh
# The steps of a spoolkeeper GitOps pipeline, shared by .gitlab-ci.yml and
# github-actions.yml (and run as-is by the lab test tests/lab_gitops.rs):
#
#   pipeline.sh validate DIR          every merge request: the specs parse and check (exit 1: not)
#   pipeline.sh plan DIR OUT          every merge request: OUT/<cluster>.md (the comment to post)
#                                     and OUT/<cluster>.json (the reviewed plan, an artifact)
#   pipeline.sh apply DIR OUT         on merge: run exactly the reviewed plans; a plan is
#                                     refused when the hosts changed since (stale), the spec is
#                                     not the one it was made from, or a safety rule blocks it
#
# Environment: SPOOLKEEPER (the binary, default spoolkeeper), SPOOLKEEPER_STATE_DIR (the
# journal and replay ledger: keep it on the runner that applies, persistent).
set -eu

sk=${SPOOLKEEPER:-spoolkeeper}
cmd=${1:?usage: pipeline.sh validate|plan|apply DIR [OUT]}
dir=${2:?the directory of spec files}

case "$cmd" in
validate)
	exec "$sk" validate -f "$dir"
	;;
plan)
	out=${3:?the output directory}
	mkdir -p "$out"
	worst=0
	for spec in "$dir"/*.yaml "$dir"/*.yml; do
		[ -e "$spec" ] || continue
		name=$(basename "$spec")
		name=${name%.*}
		# exit 0: nothing to do, 2: changes; both are a plan to review
		rc=0
		"$sk" plan -f "$spec" --output markdown --out "$out/$name.json" >"$out/$name.md" || rc=$?
		case $rc in
		0 | 2) echo "plan of $spec: $out/$name.md (exit $rc)" ;;
		*)
			echo "plan of $spec failed (exit $rc)" >&2
			worst=1
			;;
		esac
	done
	exit $worst
	;;
apply)
	out=${3:?the directory of reviewed plans}
	worst=0
	for spec in "$dir"/*.yaml "$dir"/*.yml; do
		[ -e "$spec" ] || continue
		name=$(basename "$spec")
		name=${name%.*}
		if [ ! -f "$out/$name.json" ]; then
			echo "no reviewed plan for $spec: run the plan job of the merge request" >&2
			worst=1
			continue
		fi
		rc=0
		"$sk" apply -f "$spec" --plan "$out/$name.json" || rc=$?
		case $rc in
		0) echo "applied the reviewed plan of $spec" ;;
		3)
			echo "$spec: a safety rule blocks the reviewed plan now (see above)" >&2
			worst=3
			;;
		*)
			echo "$spec: the reviewed plan was not applied (stale or failed, see above): plan again and review" >&2
			[ $worst -eq 0 ] && worst=1
			;;
		esac
	done
	exit $worst
	;;
*)
	echo "unknown step $cmd: validate, plan or apply" >&2
	exit 64
	;;
esac
