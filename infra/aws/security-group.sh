#!/usr/bin/env bash
# Create (or bring up to date) the cluster's security group: SSH from the admin CIDR only, all
# traffic between cluster members, and nothing else. Ray's ports (6379 GCS, 8265 dashboard, 10001
# client, ...) are never opened to the internet; reach the dashboard with `ray dashboard`.
#
#   VPC_ID=vpc-... ADMIN_CIDR=203.0.113.7/32 REGION=us-east-1 ./infra/aws/security-group.sh
#
# We create it ourselves (and name it in cluster.yaml) because the group the Ray launcher creates
# on its own opens SSH to 0.0.0.0/0. Idempotent: a rerun finds the group by name, adds only missing
# rules and revokes SSH rules for any other CIDR (a changed ADMIN_CIDR replaces the old one).
set -euo pipefail

: "${VPC_ID:?set VPC_ID}"
: "${ADMIN_CIDR:?set ADMIN_CIDR (your workstation, e.g. 203.0.113.7/32)}"
: "${REGION:?set REGION}"
if [ "$ADMIN_CIDR" = "0.0.0.0/0" ] || [ "$ADMIN_CIDR" = "::/0" ]; then
  echo "ADMIN_CIDR must be your own address range, not the whole internet" >&2
  exit 2
fi
NAME=deepsad-ray

SG_ID="$(aws ec2 describe-security-groups --region "$REGION" \
  --filters "Name=vpc-id,Values=${VPC_ID}" "Name=group-name,Values=${NAME}" \
  --query 'SecurityGroups[0].GroupId' --output text)"
if [ -z "$SG_ID" ] || [ "$SG_ID" = "None" ]; then
  SG_ID="$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" \
    --group-name "$NAME" --description "deepsad Ray cluster: SSH from admin, intra-cluster only" \
    --query GroupId --output text)"
  echo "created $SG_ID"
else
  echo "exists: $SG_ID"
fi

# the group's current ingress rules, one per line: "tcp 22 22 203.0.113.7/32" or "-1 group sg-..."
rules="$(aws ec2 describe-security-group-rules --region "$REGION" \
  --filters "Name=group-id,Values=${SG_ID}" \
  --query 'SecurityGroupRules[?IsEgress==`false`].[IpProtocol,FromPort,ToPort,CidrIpv4,ReferencedGroupInfo.GroupId,SecurityGroupRuleId]' \
  --output text)"

ssh_ok=no
while read -r proto from to cidr group rule_id; do
  [ -z "${proto:-}" ] && continue
  if [ "$proto" = tcp ] && [ "$from" = 22 ] && [ "$to" = 22 ] && [ "$cidr" != None ]; then
    if [ "$cidr" = "$ADMIN_CIDR" ]; then
      ssh_ok=yes
    else
      aws ec2 revoke-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
        --security-group-rule-ids "$rule_id" >/dev/null
      echo "revoked SSH from $cidr"
    fi
  fi
done <<< "$rules"
if [ "$ssh_ok" = no ]; then
  aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
    --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=${ADMIN_CIDR},Description=admin-ssh}]" >/dev/null
fi
# Ray nodes talk to each other on many ports (GCS, raylets, object manager, workers, NCCL)
if ! grep -qE "^-1[[:space:]].*[[:space:]]${SG_ID}[[:space:]]" <<< "$rules"; then
  aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
    --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=${SG_ID},Description=intra-cluster}]" >/dev/null
fi
echo "security group: $SG_ID  (put it in infra/aws/cluster.yaml: SecurityGroupIds, and SECURITY_GROUP_ID for bucket.sh)"
