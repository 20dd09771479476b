#!/usr/bin/env bash
# Create (or bring up to date) the sweep bucket and the two IAM instance profiles of cluster.yaml.
#
#   BUCKET=my-deepsad-sweeps PREFIX=sweeps REGION=us-east-1 \
#   AMI_ID=ami-... SECURITY_GROUP_ID=sg-... ./infra/aws/bucket.sh
#
# AMI_ID and SECURITY_GROUP_ID are the ones in cluster.yaml (security-group.sh prints the group):
# the head may launch workers only from that image into that group. NONCURRENT_DAYS (default 30):
# how long an overwritten or deleted object version stays recoverable.
#
# Needs the AWS CLI v2 and an admin identity from the standard AWS chain (no keys in this file).
# Idempotent: a rerun with the same settings changes nothing and succeeds; every setting below is
# declared (put), never appended, so a rerun also repairs drift.
set -euo pipefail

: "${BUCKET:?set BUCKET (the S3 bucket name)}"
: "${PREFIX:?set PREFIX (the key prefix sweeps live under: one path segment, e.g. sweeps)}"
: "${REGION:?set REGION (e.g. us-east-1)}"
: "${AMI_ID:?set AMI_ID (cluster.yaml ImageId)}"
: "${SECURITY_GROUP_ID:?set SECURITY_GROUP_ID (from security-group.sh, cluster.yaml SecurityGroupIds)}"
NONCURRENT_DAYS="${NONCURRENT_DAYS:-30}"
# One segment: Ray Tune creates its directories with a marker object for every ancestor ("a/" for
# "a/b/..."), and the policy allows writes under PREFIX/ only.
if ! [[ "$PREFIX" =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "PREFIX must be one path segment of letters, digits, '.', '_' or '-' (got '$PREFIX')" >&2
  exit 2
fi
HERE="$(cd "$(dirname "$0")" && pwd)"
ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# fill the placeholders of the checked-in policies
render() {
  sed -e "s|BUCKET|${BUCKET}|g" -e "s|PREFIX|${PREFIX}|g" -e "s|REGION|${REGION}|g" \
      -e "s|ACCOUNT_ID|${ACCOUNT_ID}|g" -e "s|ami-REPLACE_ME|${AMI_ID}|g" \
      -e "s|sg-REPLACE_ME|${SECURITY_GROUP_ID}|g" "$HERE/$1" > "$TMP/$1"
  echo "$TMP/$1"
}

echo "== bucket s3://${BUCKET} (${REGION})"
if aws s3api head-bucket --bucket "$BUCKET" 2>/dev/null; then
  echo "   exists, keeping it"
elif [ "$REGION" = "us-east-1" ]; then
  aws s3api create-bucket --bucket "$BUCKET" --region "$REGION" >/dev/null
else
  aws s3api create-bucket --bucket "$BUCKET" --region "$REGION" \
    --create-bucket-configuration "LocationConstraint=${REGION}" >/dev/null
fi

# nothing in this bucket is ever public
aws s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
aws s3api put-bucket-ownership-controls --bucket "$BUCKET" \
  --ownership-controls 'Rules=[{ObjectOwnership=BucketOwnerEnforced}]'
# versioning: an overwritten or deleted checkpoint/result can be recovered ...
aws s3api put-bucket-versioning --bucket "$BUCKET" --versioning-configuration Status=Enabled
# ... for NONCURRENT_DAYS, then the old version goes; unfinished multipart uploads go after a day
cat > "$TMP/lifecycle.json" <<JSON
{"Rules": [{"ID": "deepsad-old-versions", "Status": "Enabled", "Filter": {},
  "NoncurrentVersionExpiration": {"NoncurrentDays": ${NONCURRENT_DAYS}},
  "Expiration": {"ExpiredObjectDeleteMarker": true},
  "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}
JSON
aws s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" \
  --lifecycle-configuration "file://$TMP/lifecycle.json"
# default encryption at rest (SSE-S3; switch to aws:kms with your key if your policy requires it)
aws s3api put-bucket-encryption --bucket "$BUCKET" --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"},"BucketKeyEnabled":true}]}'
# refuse plain-HTTP requests
aws s3api put-bucket-policy --bucket "$BUCKET" --policy "file://$(render bucket-policy.json)"

# role + instance profile: $1 name, then inline policy files
make_profile() {
  local name="$1"; shift
  local trust; trust="$(render trust-ec2.json)"
  if aws iam get-role --role-name "$name" >/dev/null 2>&1; then
    aws iam update-assume-role-policy --role-name "$name" --policy-document "file://$trust"
  else
    aws iam create-role --role-name "$name" --assume-role-policy-document "file://$trust" >/dev/null
  fi
  for policy in "$@"; do
    aws iam put-role-policy --role-name "$name" --policy-name "${policy%.json}" \
      --policy-document "file://$(render "$policy")"
  done
  if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
  fi
  # a profile left without its role by an interrupted earlier run gets it now
  if [ -z "$(aws iam get-instance-profile --instance-profile-name "$name" \
      --query "InstanceProfile.Roles[?RoleName=='${name}'].RoleName" --output text)" ]; then
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
  fi
  echo "   instance profile $name: arn:aws:iam::${ACCOUNT_ID}:instance-profile/${name}"
}

echo "== IAM"
# workers: the sweep prefix, and pulling the project image
make_profile deepsad-ray-worker iam-policy.json ecr-pull-policy.json
# head: the same, plus launching, re-tagging and terminating this cluster's workers
make_profile deepsad-ray-head iam-policy.json ecr-pull-policy.json head-autoscaler-policy.json

echo "== done. Sweeps go to: --storage s3://${BUCKET}/${PREFIX}"
