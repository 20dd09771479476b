#!/usr/bin/env bash
# The IAM role the KubeRay pods (k8s/*.yaml, service accounts deepsad-ray-head and
# deepsad-ray-worker) reach S3 with: iam-policy.json, nothing else. The default way for Kubernetes;
# static keys in a Secret are the documented fallback (infra/README.md).
#
#   MODE=pod-identity EKS_CLUSTER=my-eks NAMESPACE=deepsad BUCKET=... PREFIX=sweeps REGION=us-east-1 \
#       ./infra/aws/eks-pod-role.sh     # EKS Pod Identity (the agent add-on must be installed)
#   MODE=irsa ...                       # IAM roles for service accounts (the cluster's OIDC provider
#                                       # must be associated: eksctl utils associate-iam-oidc-provider)
#
# With MODE=irsa, put the printed role ARN into k8s/serviceaccounts.yaml (eks.amazonaws.com/role-arn).
# Idempotent: a rerun with the same settings changes nothing and succeeds.
set -euo pipefail

: "${MODE:?set MODE (pod-identity or irsa)}"
: "${EKS_CLUSTER:?set EKS_CLUSTER (the EKS cluster name)}"
: "${NAMESPACE:?set NAMESPACE (where k8s/*.yaml are applied)}"
: "${BUCKET:?set BUCKET}"
: "${PREFIX:?set PREFIX (one path segment)}"
: "${REGION:?set REGION}"
ROLE=deepsad-ray-pods
SERVICE_ACCOUNTS=(deepsad-ray-head deepsad-ray-worker)
HERE="$(cd "$(dirname "$0")" && pwd)"
ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

case "$MODE" in
  pod-identity) TRUST=trust-pod-identity.json; OIDC_ISSUER=none ;;
  irsa)
    TRUST=trust-irsa.json
    OIDC_ISSUER="$(aws eks describe-cluster --name "$EKS_CLUSTER" --region "$REGION" \
      --query cluster.identity.oidc.issuer --output text)"
    OIDC_ISSUER="${OIDC_ISSUER#https://}" ;;
  *) echo "MODE must be pod-identity or irsa (got '$MODE')" >&2; exit 2 ;;
esac

render() {
  sed -e "s|BUCKET|${BUCKET}|g" -e "s|PREFIX|${PREFIX}|g" -e "s|REGION|${REGION}|g" \
      -e "s|ACCOUNT_ID|${ACCOUNT_ID}|g" -e "s|EKS_CLUSTER|${EKS_CLUSTER}|g" \
      -e "s|NAMESPACE|${NAMESPACE}|g" -e "s|OIDC_ISSUER|${OIDC_ISSUER}|g" "$HERE/$1" > "$TMP/$1"
  echo "$TMP/$1"
}

echo "== IAM role $ROLE ($MODE)"
trust="$(render "$TRUST")"
if aws iam get-role --role-name "$ROLE" >/dev/null 2>&1; then
  aws iam update-assume-role-policy --role-name "$ROLE" --policy-document "file://$trust"
else
  aws iam create-role --role-name "$ROLE" --assume-role-policy-document "file://$trust" >/dev/null
fi
aws iam put-role-policy --role-name "$ROLE" --policy-name iam-policy \
  --policy-document "file://$(render iam-policy.json)"
ROLE_ARN="arn:aws:iam::${ACCOUNT_ID}:role/${ROLE}"

if [ "$MODE" = pod-identity ]; then
  for sa in "${SERVICE_ACCOUNTS[@]}"; do
    existing="$(aws eks list-pod-identity-associations --cluster-name "$EKS_CLUSTER" --region "$REGION" \
      --namespace "$NAMESPACE" --service-account "$sa" --query 'associations[0].associationId' --output text)"
    if [ -z "$existing" ] || [ "$existing" = "None" ]; then
      aws eks create-pod-identity-association --cluster-name "$EKS_CLUSTER" --region "$REGION" \
        --namespace "$NAMESPACE" --service-account "$sa" --role-arn "$ROLE_ARN" >/dev/null
    elif [ "$(aws eks describe-pod-identity-association --cluster-name "$EKS_CLUSTER" --region "$REGION" \
        --association-id "$existing" --query association.roleArn --output text)" != "$ROLE_ARN" ]; then
      aws eks update-pod-identity-association --cluster-name "$EKS_CLUSTER" --region "$REGION" \
        --association-id "$existing" --role-arn "$ROLE_ARN" >/dev/null
    fi
    echo "   $NAMESPACE/$sa -> $ROLE_ARN"
  done
else
  echo "   put into infra/k8s/serviceaccounts.yaml: eks.amazonaws.com/role-arn: $ROLE_ARN"
fi
