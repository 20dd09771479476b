#!/usr/bin/env bash
# Create the sweep bucket and the two IAM instance profiles the cluster in cluster.yaml uses.
#
#   BUCKET=my-deepsad-sweeps PREFIX=sweeps REGION=us-east-1 ./infra/aws/bucket.sh
#
# Needs the AWS CLI v2 and an admin identity from the standard AWS chain (no keys in this file).
# Idempotent enough to rerun: existing bucket/role/profile are reported and kept.
set -euo pipefail

: "${BUCKET:?set BUCKET (the S3 bucket name)}"
: "${PREFIX:?set PREFIX (the key prefix sweeps live under, no slashes at either end)}"
: "${REGION:?set REGION (e.g. us-east-1)}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# fill the placeholders of the checked-in policies (BUCKET, PREFIX, REGION, ACCOUNT_ID)
render() {
  sed -e "s|BUCKET|${BUCKET}|g" -e "s|PREFIX|${PREFIX}|g" \
      -e "s|REGION|${REGION}|g" -e "s|ACCOUNT_ID|${ACCOUNT_ID}|g" "$HERE/$1" > "$TMP/$1"
  echo "$TMP/$1"
}

echo "== bucket s3://${BUCKET} (${REGION})"
if aws s3api head-bucket --bucket "$BUCKET" 2>/dev/null; then
  echo "   exists, keeping it"
elif [ "$REGION" = "us-east-1" ]; then
  aws s3api create-bucket --bucket "$BUCKET" --region "$REGION"
else
  aws s3api create-bucket --bucket "$BUCKET" --region "$REGION" \
    --create-bucket-configuration "LocationConstraint=${REGION}"
fi

# nothing in this bucket is ever public
aws s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
aws s3api put-bucket-ownership-controls --bucket "$BUCKET" \
  --ownership-controls 'Rules=[{ObjectOwnership=BucketOwnerEnforced}]'
# versioning: an overwritten or deleted checkpoint/result can be recovered
aws s3api put-bucket-versioning --bucket "$BUCKET" --versioning-configuration Status=Enabled
# default encryption at rest (SSE-S3; switch to aws:kms with your key if your policy requires it)
aws s3api put-bucket-encryption --bucket "$BUCKET" --server-side-encryption-configuration \
  '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"},"BucketKeyEnabled":true}]}'
# refuse plain-HTTP requests
aws s3api put-bucket-policy --bucket "$BUCKET" --policy "file://$(render bucket-policy.json)"

# role + instance profile: $1 name, then inline policy files
make_profile() {
  local name="$1"; shift
  cat > "$TMP/trust.json" <<'JSON'
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
  "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
JSON
  aws iam get-role --role-name "$name" >/dev/null 2>&1 \
    || aws iam create-role --role-name "$name" --assume-role-policy-document "file://$TMP/trust.json" >/dev/null
  for policy in "$@"; do
    aws iam put-role-policy --role-name "$name" --policy-name "${policy%.json}" \
      --policy-document "file://$(render "$policy")"
  done
  if ! aws iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
    aws iam create-instance-profile --instance-profile-name "$name" >/dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
  fi
  echo "   instance profile $name: arn:aws:iam::${ACCOUNT_ID}:instance-profile/${name}"
}

echo "== IAM"
# workers: the sweep prefix, and pulling the project image
make_profile deepsad-ray-worker iam-policy.json ecr-pull-policy.json
# head: the same prefix, plus what the Ray autoscaler needs to start and stop this cluster's workers
make_profile deepsad-ray-head iam-policy.json ecr-pull-policy.json head-autoscaler-policy.json

echo "== done. Sweeps go to: --storage s3://${BUCKET}/${PREFIX}"
